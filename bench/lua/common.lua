-- Shared by the bench scripts: unique keys per thread, and one JSON line of results at the end.
-- Arguments after `--`: run id, namespace prefix, namespace count (claims rotate over them).
-- wrk runs with bench/lua as its working directory, so scripts load this file by name.

local threads = {}
local next_thread = 1

function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  run_id, namespace_prefix, namespace_count = args[1], args[2], tonumber(args[3])
  sent, completed = 0, 0
  pending = {}
end

-- A key nobody used before: run, thread and a per-thread counter.
function next_target()
  sent = sent + 1
  local namespace = string.format("%s%04d", namespace_prefix, sent % namespace_count)
  return namespace, string.format("%s-%d-%d", run_id, thread_id, sent)
end

function done(summary, latency, requests)
  local total_completed = 0
  for _, thread in ipairs(threads) do
    total_completed = total_completed + thread:get("completed")
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"completed":%d,"errors":%d,'
      .. '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, total_completed,
    errors.connect + errors.read + errors.write + errors.status + errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
