-- Reads busted's TAP output on stdin, echoes it, and ends with the line
-- "N passed, N failed" that CI reads (", N skipped" after it if any spec
-- was pending).  Exits non-zero on any failure, and
-- when no test ran at all (a spec file that failed to load, a crash).  A
-- last line "# exit status N" (the Makefile adds it) with N not 0 and no
-- failed spec is one failure more: a crash or a sanitizer's report at exit.
local passed, failed, skipped, planned, status = 0, 0, 0, nil, 0
for line in io.lines() do
  io.write(line, "\n")
  if line:match("^ok .*# SKIP") then
    skipped = skipped + 1
  elseif line:match("^ok ") then
    passed = passed + 1
  elseif line:match("^not ok ") then
    failed = failed + 1
  elseif line:match("^1%.%.%d+") then
    planned = tonumber(line:match("^1%.%.(%d+)"))
  elseif line:match("^# exit status %d+") then
    status = tonumber(line:match("(%d+)$"))
  end
end
if planned and passed + failed + skipped < planned then
  failed = failed + planned - passed - failed - skipped   -- the run stopped early
end
if status ~= 0 and failed == 0 then
  print("# the run exited with status " .. status .. " although no spec failed: see its report above")
  failed = 1
end
if skipped > 0 then
  print(string.format("%d passed, %d failed, %d skipped", passed, failed, skipped))
else
  print(string.format("%d passed, %d failed", passed, failed))
end
os.exit(failed == 0 and passed > 0 and 0 or 1)
