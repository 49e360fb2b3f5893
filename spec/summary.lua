-- Reads busted's TAP output on stdin, echoes it, and ends with the line
-- "N passed, N failed" that CI reads.  Exits non-zero on any failure, and
-- when no test ran at all (a spec file that failed to load, a crash).
local passed, failed, planned = 0, 0, nil
for line in io.lines() do
  io.write(line, "\n")
  if line:match("^ok ") then
    passed = passed + 1
  elseif line:match("^not ok ") then
    failed = failed + 1
  elseif line:match("^1%.%.%d+") then
    planned = tonumber(line:match("^1%.%.(%d+)"))
  end
end
if planned and passed + failed < planned then
  failed = failed + planned - passed - failed   -- the run stopped early
end
print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and passed > 0 and 0 or 1)
