-- Reads busted's TAP output on stdin, echoes it, and ends with the line
-- "N passed, N failed" that CI reads (", N skipped" after it if any spec
-- was pending).  Exits non-zero on any failure, and
-- when no test ran at all (a spec file that failed to load, a crash).
-- Each run ends with a line "# exit status N" (the Makefile adds it); the
-- input may hold several runs (one per spec file), added up.  A run whose
-- status is not 0 with no failed spec is one failure more: a crash or a
-- sanitizer's report at exit; a run that stopped before its plan (a
-- crash, a timeout) fails the specs it did not run, or one if it printed
-- no plan.
local passed, failed, skipped = 0, 0, 0
local run = {passed = 0, failed = 0, skipped = 0}
local function endrun(status)
  local done = run.passed + run.failed + run.skipped
  if run.planned and done < run.planned then
    failed = failed + run.planned - done        -- the run stopped early
  elseif status ~= 0 and run.failed == 0 then
    print("# a run exited with status " .. status .. " although no spec failed: see its report above")
    failed = failed + 1
  end
  run = {passed = 0, failed = 0, skipped = 0}
end
for line in io.lines() do
  io.write(line, "\n")
  if line:match("^ok .*# SKIP") then
    skipped, run.skipped = skipped + 1, run.skipped + 1
  elseif line:match("^ok ") then
    passed, run.passed = passed + 1, run.passed + 1
  elseif line:match("^not ok ") then
    failed, run.failed = failed + 1, run.failed + 1
  elseif line:match("^1%.%.%d+") then
    run.planned = tonumber(line:match("^1%.%.(%d+)"))
  elseif line:match("^# exit status %d+") then
    endrun(tonumber(line:match("(%d+)$")))
  end
end
if skipped > 0 then
  print(string.format("%d passed, %d failed, %d skipped", passed, failed, skipped))
else
  print(string.format("%d passed, %d failed", passed, failed))
end
os.exit(failed == 0 and passed > 0 and 0 or 1)
