-- Borrowed long strings around the process, run by borrow_spec.lua in a
-- subprocess of its own: `borrow.lua MODE PATH`.
--   ctrlc-run      prints "ready PID", then isolate.run of an endless
--                  function with a 1 MiB argument (it writes PATH first);
--                  the spec sends SIGINT.  Prints "caught: ERR", "busy N"
--                  once the pool has no busy worker (or after 20 s), then
--                  "again: ok" once a second run with the string works
--   ctrlc-worker   the same with a hook set, so that run's job goes to a
--                  worker (not the caller's thread)
--   end-pool       a pool's task returns a long string; its output is
--                  taken, not decoded, when the script ends: the isolate's
--                  finalizer must write PATH ("closed")
--   fork-bytes     a task's long result, taken before a fork, is awaited
--                  in the child: prints "child: ok" and "parent: ok"
--   luv            long results through isolate.luv (run in coroutines,
--                  spawn's callback): prints "luv: ok".  (In a process of
--                  its own: a luv loop left idle while other specs run has
--                  a stale clock, which fires the next spec's timers early.)
local isolate = require "isolate"
local posix = require "posix"
local poll = dofile("spec/poll.lua")
local touch = poll.touch

io.stdout:setvbuf("no")
local mode, path = arg[1], arg[2]
local N = 1 << 20
local long = string.rep("b", N - 1) .. "\0"

local function ready()
  io.stdout:write("ready ", posix.getpid(), "\n")
end

if mode == "ctrlc-run" or mode == "ctrlc-worker" then
  assert(isolate.run(function() return 1 end) == 1)
  if mode == "ctrlc-worker" then debug.sethook(function() end, "", 1e9) end
  local ok, err = pcall(function()
    ready()
    return isolate.run(function(s)
      touch(path, "started")
      while #s > 0 do end
    end, long)
  end)
  debug.sethook()
  io.stdout:write("caught: ", ok and "nothing" or tostring(err), "\n")
  collectgarbage(); collectgarbage()
  poll.eventually(function() return isolate.stats().busy == 0 end, 20)
  io.stdout:write("busy ", isolate.stats().busy, "\n")
  collectgarbage(); collectgarbage()
  local r = isolate.run(function(s) return s .. "" end, long)
  io.stdout:write("again: ", r == long and "ok" or "wrong bytes", "\n")
elseif mode == "end-pool" then
  local pool = isolate.pool{size = 1}
  TASK = pool:spawn(function(marker)
    KEEP = setmetatable({}, {__gc = function() poll.touch(marker, "closed") end})
    return string.rep("p", 1100000)
  end, path)
  assert(TASK:wait())
  POOL = pool
  print("end of script")
elseif mode == "fork-bytes" then
  local task = isolate.spawn(function(n) return string.rep("k", n - 1) .. "\0" end, N)
  assert(task:wait())
  local pid = posix.fork()
  if pid == 0 then
    local ok, r = pcall(task.await, task)
    io.stdout:write("child: ", ok and (r == long:gsub("b", "k") and "ok" or "wrong bytes") or tostring(r), "\n")
    posix._exit(0)
  end
  posix.waitpid(pid)
  io.stdout:write("parent: ", task:await() == long:gsub("b", "k") and "ok" or "wrong bytes", "\n")
elseif mode == "luv" then
  local uv = require "luv"
  local iso = require "isolate.luv"
  local got, called = {}, false
  for i = 1, 5 do
    coroutine.wrap(function()
      got[i] = iso.run(function(x, i) return x .. i end, long, i)
      collectgarbage()
    end)()
  end
  iso.spawn(function(x) return x end, long, function(ok, r) called = ok and r == long end)
  local watchdog = uv.new_timer()
  watchdog:start(20000, 0, function() uv.stop() end)
  watchdog:unref()
  uv.run()
  local verdict = called or "spawn's callback"
  for i = 1, 5 do
    if got[i] ~= long .. i then verdict = "coroutine " .. i end
  end
  io.stdout:write("luv: ", verdict == true and "ok" or tostring(verdict), "\n")
else
  error("usage: borrow.lua ctrlc-run|ctrlc-worker|end-pool|fork-bytes|luv PATH")
end
