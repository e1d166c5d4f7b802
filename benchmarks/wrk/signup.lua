-- POST /api/subscriptions with a new address each time (args: a run tag, so reruns never collide).
function init(args)
  tag = args[1] or "run"
  n = 0
end

function request()
  n = n + 1
  local body = string.format(
    '{"email": "load%d.%d.%s@bench.example.org", "condition": "Condition %d"}', id, n, tag, n % 50)
  return wrk.format("POST", "/api/subscriptions", {["Content-Type"] = "application/json"}, body)
end
