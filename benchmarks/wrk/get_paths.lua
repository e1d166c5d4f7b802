-- GET of link pages as a mail scanner fetches them: args: a file of paths (one per line) and the number of
-- wrk threads; thread k takes lines k, k + threads, ... so no two threads fetch the same link at once.
function init(args)
  paths = {}
  local threads = tonumber(args[2])
  local line_number = 0
  for line in io.lines(args[1]) do
    if line_number % threads == id - 1 then
      table.insert(paths, line)
    end
    line_number = line_number + 1
  end
  n = 0
end

function request()
  n = n + 1
  return wrk.format("GET", paths[(n - 1) % #paths + 1])
end
