-- RFC 8058 one-click unsubscribe as Gmail sends it: a form-encoded POST, no cookies.
-- args: the file of unsubscribe tokens (one per line) and the number of wrk threads (each thread takes its
-- own share of the lines, so no two threads click the same link: thread_lines in lines.lua).
function init(args)
  tokens = thread_lines(args[1], tonumber(args[2]))
  n = 0
end

function request()
  n = n + 1
  local token = tokens[(n - 1) % #tokens + 1]
  return wrk.format("POST", "/unsubscribe/" .. token,
    {["Content-Type"] = "application/x-www-form-urlencoded"}, "List-Unsubscribe=One-Click")
end
