-- Claim a fresh key, then complete it with the lease token the claim returned: one pair of
-- requests per unit of work, as the adapter makes them. A thread's connections interleave, so
-- the claim sends its key as X-Request-Id and the gateway echoes it back with the token.
dofile("common.lua")

local claim_body = '{"lease_ms":60000,"ttl_s":86400}'

function request()
  local work = table.remove(pending)
  if work then
    local body = '{"lease_token":"' .. work.token .. '","result":{"ok":true}}'
    return wrk.format("POST", work.path .. "/complete",
      {["Content-Type"] = "application/json"}, body)
  end
  local namespace, key = next_target()
  local path = "/v1/records/" .. namespace .. "/" .. key
  return wrk.format("POST", path .. "/claim",
    {["Content-Type"] = "application/json", ["X-Request-Id"] = path}, claim_body)
end

function response(status, headers, body)
  if status == 201 then
    local token = string.match(body, '"lease_token":"([^"]+)"')
    local path = headers["x-request-id"] or headers["X-Request-Id"]
    table.insert(pending, {path = path, token = token})
  elseif status == 200 then
    completed = completed + 1
  end
end
