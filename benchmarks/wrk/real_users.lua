-- Real people during a scanner burst, at a modest rate: every connection waits args[3] ms between requests.
-- args: the file of unsubscribe tokens (one per line), the number of wrk threads, the pause in ms, a run tag,
-- and what they do: "signup" (a new address each time) or "one-click" (RFC 8058 unsubscribe, a token each).
function init(args)
  tokens = thread_lines(args[1], tonumber(args[2]))
  pause = tonumber(args[3])
  tag = args[4] or "run"
  action = args[5] or "signup"
  n = 0
end

function delay()
  return pause
end

function request()
  n = n + 1
  if action == "one-click" then
    local token = tokens[(n - 1) % #tokens + 1]
    return wrk.format("POST", "/unsubscribe/" .. token,
      {["Content-Type"] = "application/x-www-form-urlencoded"}, "List-Unsubscribe=One-Click")
  end
  -- Studies, as signup.lua: the web takes only conditions its vocabulary knows, and this database has none.
  local body = string.format(
    '{"email": "person%d.%d.%s@bench.example.org", "trial": "NCT%08d"}', id, n, tag, 6740100 + n % 50)
  return wrk.format("POST", "/api/subscriptions", {["Content-Type"] = "application/json"}, body)
end
