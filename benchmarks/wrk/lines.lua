-- Shared by the scripts that read a file of paths or tokens (benchmarks/web.py puts it in front of them, after
-- report.lua): this thread's share of the file's lines. Thread k of `threads` takes lines k, k + threads, ...
-- so no two threads send the same link at once.
function thread_lines(file, threads)
  local lines = {}
  local line_number = 0
  for line in io.lines(file) do
    if line_number % threads == id - 1 then
      table.insert(lines, line)
    end
    line_number = line_number + 1
  end
  return lines
end
