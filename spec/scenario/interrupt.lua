-- Ctrl-C while waiting for an isolate that never ends, run by
-- process_spec.lua in a subprocess of its own: `interrupt.lua
-- run|await|encode` (encode: the signal comes while run still encodes a
-- large argument, before its wait begins).
-- It prints "ready PID" and then waits, in isolate.run or in task:await,
-- for an endless loop.  The spec then sends SIGINT; the interpreter's
-- handler (lua.c's, or the host's copy of it) sets a hook that raises
-- "interrupted!", and the wait must let that error through, so the
-- interpreter prints it and exits with status 1.  Printing "returned"
-- would mean the wait came back with results it cannot have.
local isolate = require "isolate"
local posix = require "posix"

io.stdout:setvbuf("no")
assert(isolate.run(function() return 1 end) == 1, "the pool does not run")

local function forever() while true do end end

if arg[1] == "run" then
  io.stdout:write("ready ", posix.getpid(), "\n")
  isolate.run(forever)
elseif arg[1] == "await" then
  local task = isolate.spawn(forever)
  io.stdout:write("ready ", posix.getpid(), "\n")
  task:await()
elseif arg[1] == "encode" then
  local big = {}
  for i = 1, 2e6 do big[i] = {i} end
  io.stdout:write("ready ", posix.getpid(), "\n")
  isolate.run(forever, big)
else
  error("usage: interrupt.lua run|await|encode")
end
io.stdout:write("returned\n")
