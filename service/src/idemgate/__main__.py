from idemgate._cli import main

raise SystemExit(main())
