-- The gateway's fresh claim sent straight to DynamoDB Local: the same conditional PutItem.
-- DynamoDB Local wants an Authorization header naming an access key; it checks no signature.
dofile("common.lua")

local common_init = init
function init(args)
  common_init(args)
  dynamodb_table = args[4]
end

local headers = {
  ["Content-Type"] = "application/x-amz-json-1.0",
  ["X-Amz-Target"] = "DynamoDB_20120810.PutItem",
  ["X-Amz-Date"] = "20250101T000000Z",
  ["Authorization"] = "AWS4-HMAC-SHA256 Credential=bench/20250101/us-east-1/dynamodb/"
    .. "aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature=00",
}

function request()
  local namespace, key = next_target()
  local now_s = os.time()
  local body = string.format(
    '{"TableName":"%s","Item":{"pk":{"S":"%s#%s"},"status":{"S":"in_progress"},'
      .. '"attempt":{"N":"1"},"lease_token":{"S":"%s"},"lease_expires_at":{"N":"%d"},'
      .. '"ttl_s":{"N":"86400"},"expires_at":{"N":"%d"}},'
      .. '"ConditionExpression":"attribute_not_exists(#pk) OR #expires <= :now_s",'
      .. '"ExpressionAttributeNames":{"#pk":"pk","#expires":"expires_at"},'
      .. '"ExpressionAttributeValues":{":now_s":{"N":"%d"}},'
      .. '"ReturnValuesOnConditionCheckFailure":"ALL_OLD"}',
    dynamodb_table, namespace, key, key, (now_s + 60) * 1000, now_s + 86400, now_s)
  return wrk.format("POST", "/", headers, body)
end
