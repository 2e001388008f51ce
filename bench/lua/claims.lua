-- POST a claim to a fresh key on every request: each answer is a 201, never a replay.
dofile("common.lua")

local body = '{"lease_ms":60000,"ttl_s":86400}'
local headers = {["Content-Type"] = "application/json"}

function request()
  local namespace, key = next_target()
  return wrk.format("POST", "/v1/records/" .. namespace .. "/" .. key .. "/claim", headers, body)
end
