-- A fork while a thread of the process waits for task ends (an isolate
-- inside isolate.completed): the child then waits for ends of its own,
-- many times.  Run by process_spec.lua in a subprocess of its own; prints
-- "child: true nil" and the parent's lines, or hangs (the child inherited
-- the waiter of a condition variable that no thread of it holds).
local isolate = require "isolate"
local posix = require "posix"

io.stdout:setvbuf("no")
posix.alarm(20)
local waiter = isolate.spawn(function()
  local long = isolate.spawn(function() local t0 = os.time() while os.time() - t0 < 3 do end return 1 end)
  for _ in isolate.completed({long}, 100) do end   -- waits for ends on a worker
  return "waited"
end)
os.execute("sleep 0.3")
local pid = posix.fork()
if pid == 0 then
  posix.alarm(10)
  local ok, err = pcall(function()
    for _ = 1, 50 do
      local ts = {}
      for i = 1, 4 do ts[i] = isolate.spawn(function(x) return x end, i) end
      for _ in isolate.completed(ts) do end
    end
  end)
  io.stdout:write("child: ", tostring(ok), " ", tostring(err), "\n")
  posix._exit(ok and 0 or 1)
end
local how, code = posix.waitpid(pid)
io.stdout:write("parent: child ", tostring(how), " ", tostring(code), "\n")
io.stdout:write("parent: ", tostring(waiter:await()), "\n")
