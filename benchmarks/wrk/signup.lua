-- POST /api/subscriptions with a new address each time (args: a run tag, so reruns never collide).
-- Studies, not conditions: the web takes only conditions its vocabulary knows, and this database has none.
function init(args)
  tag = args[1] or "run"
  n = 0
end

function request()
  n = n + 1
  local body = string.format(
    '{"email": "load%d.%d.%s@bench.example.org", "trial": "NCT%08d"}', id, n, tag, 6740100 + n % 50)
  return wrk.format("POST", "/api/subscriptions", {["Content-Type"] = "application/json"}, body)
end
