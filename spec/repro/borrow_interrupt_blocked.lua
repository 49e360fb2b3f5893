-- Regression (fixed): Ctrl-C while isolate.run waits, with a long string (>= 1 MiB)
-- among its arguments, is held until the job ends: output() cancels the
-- job, then waits for its end, since the job may still read the caller's
-- strings.  A job blocked in C (a read of a pipe, a socket) does not see
-- the cancel before the call returns: here 3 s instead of at once.  Run's
-- job runs on a worker when a hook is set (a debugger, luacov) or when no
-- prepared state is at hand; the arguments were read long before.
--   lua5.4 spec/repro/borrow_interrupt_blocked.lua [SIZE]
-- (SIGINT is sent to itself after 1 s; SIZE default 1100000, 10: no bug)
-- Prints "ok" when run raised within 1 s of the signal.
local isolate = require "isolate"
local socket = require "socket"
local size = tonumber(arg[1] or 1100000)
local start = socket.gettime()
local pid = io.open("/proc/self/stat"):read("n")

debug.sethook(function() end, "", 1e9)	-- a hook: run's job goes to a worker
os.execute(string.format("(sleep 1; kill -INT %d) &", pid))
local ok, err = pcall(isolate.run, function(s)
  return io.popen("sleep 4; echo done"):read("a")
end, string.rep("x", size))
local after = socket.gettime() - start - 1	-- the signal: 1 s after the start
debug.sethook()
assert(not ok and tostring(err):match("interrupted"), "not interrupted: " .. tostring(err))
assert(after < 1, string.format("run raised %.1f s after the signal", after))
print("ok")
