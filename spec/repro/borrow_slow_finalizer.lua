-- Regression (fixed): every state kept for borrowed results is closed by the pool's one
-- preparer thread, finalizers included.  An isolate's finalizer that
-- takes seconds (or never ends) then holds that thread: the other kept
-- states of the pool wait to be closed (their finalizers, their memory),
-- and a fork() waits too, since the fork handler waits until the preparer
-- is not closing a state (quiesce).  Before borrowing, each worker closed
-- the states of its own jobs, and a fork waited for none.
--   lua5.4 spec/repro/borrow_slow_finalizer.lua [close|fork]
-- Prints "ok" when the other state was closed, or fork() returned, within
-- 1 s, while the slow finalizer (3 s) runs.
package.cpath = "build/spec/?.so;" .. package.cpath
local isolate = require "isolate"
local posix = require "posix"
local what = arg and arg[1] or "close"

local started = os.tmpname()
os.remove(started)
local slow = isolate.spawn(function(path)
  KEEP = setmetatable({}, {__gc = function()
    io.open(path, "w"):close()
    local t0 = os.time()
    while os.time() - t0 < 3 do end
  end})
  return string.rep("s", 1100000)
end, started)
assert(#slow:await() == 1100000)		-- its state goes to the preparer
local deadline = posix.monotonic() + 5
while not io.open(started) and posix.monotonic() < deadline do end
assert(io.open(started), "the slow finalizer did not start")
os.remove(started)

local t0 = posix.monotonic()
if what == "fork" then
  local pid = posix.fork()
  if pid == 0 then posix._exit(0) end
  posix.waitpid(pid)
else
  local marker = os.tmpname()
  os.remove(marker)
  assert(#isolate.spawn(function(path)
    KEEP = setmetatable({}, {__gc = function() io.open(path, "w"):close() end})
    return string.rep("q", 1100000)
  end, marker):await() == 1100000)
  while not io.open(marker) and posix.monotonic() - t0 < 10 do end
  os.remove(marker)
end
local took = posix.monotonic() - t0
assert(took < 1, string.format("%s took %.1f s, behind another isolate's finalizer",
  what == "fork" and "fork()" or "closing the second state", took))
print("ok")
