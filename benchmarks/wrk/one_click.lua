-- RFC 8058 one-click unsubscribe as Gmail sends it: a form-encoded POST, no cookies.
-- args: the file of unsubscribe tokens (one per line) and the number of wrk threads; thread k takes
-- lines k, k + threads, ... so no two threads click the same link.
function init(args)
  tokens = {}
  local threads = tonumber(args[2])
  local line_number = 0
  for line in io.lines(args[1]) do
    if line_number % threads == id - 1 then
      table.insert(tokens, line)
    end
    line_number = line_number + 1
  end
  n = 0
end

function request()
  n = n + 1
  local token = tokens[(n - 1) % #tokens + 1]
  return wrk.format("POST", "/unsubscribe/" .. token,
    {["Content-Type"] = "application/x-www-form-urlencoded"}, "List-Unsubscribe=One-Click")
end
