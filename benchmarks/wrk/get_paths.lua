-- GET of link pages as a mail scanner fetches them: args: a file of paths (one per line) and the number of
-- wrk threads (each thread takes its own share of the lines: thread_lines in lines.lua).
function init(args)
  paths = thread_lines(args[1], tonumber(args[2]))
  n = 0
end

function request()
  n = n + 1
  return wrk.format("GET", paths[(n - 1) % #paths + 1])
end
