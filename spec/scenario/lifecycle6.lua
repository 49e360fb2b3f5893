-- The life cycle of tasks around their caller, run by lifecycle_spec.lua in
-- a subprocess of its own: `lifecycle6.lua MODE PATH [W]`.
--   end          all workers busy in endless loops, one more task queued
--                (it would write PATH); the script ends: the process must
--                exit at once, status 0, and the queued task never start
--   lost         a failed task, waited for but its error never seen, is
--                collected: a Lua warning when warnings are on
--   seen         the same, its error seen through await: no warning
--   map          prints "ready PID", then maps an endless function (each
--                call writes PATH first); the spec sends SIGINT
--   map-caught   the same inside a pcall; prints "caught: ERR", then
--                "busy N" once the pool has no busy worker (or after 5 s)
--   run-caught   the same for isolate.run
--   coroutine-await  prints "ready PID" in a coroutine, then awaits an
--                endless task there; the spec sends SIGINT
-- With W, the script turns warnings on itself, as lua5.4 -W does: for the
-- spec host (the TSan run), which takes no options.
local isolate = require "isolate"
local posix = require "posix"
local poll = dofile("spec/poll.lua")
local touch, eventually = poll.touch, poll.eventually

io.stdout:setvbuf("no")
local mode, path = arg[1], arg[2]
if arg[3] == "W" then warn("@on") end
assert(isolate.run(function() return 1 end) == 1, "the pool does not run")

-- an isolate's endless work, which says it has begun by writing 'path'
local function endless()
  touch(path, "started")
  while true do end
end

local function ready()
  io.stdout:write("ready ", posix.getpid(), "\n")
end

-- after a caught interrupt: what was caught, and whether the work it
-- waited for was cancelled (no worker left busy)
local function report(ok, err)
  io.stdout:write("caught: ", ok and "nothing" or tostring(err), "\n")
  eventually(function() return isolate.stats().busy == 0 end, 20)  -- (loaded machines, valgrind)
  io.stdout:write("busy ", isolate.stats().busy, "\n")
end

local list = {}
for i = 1, 2 * isolate.cpus() do list[i] = i end

if mode == "end" then
  local running = {}
  for i = 1, isolate.cpus() do running[i] = isolate.spawn(function() while true do end end) end
  assert(eventually(function()
    for i = 1, #running do
      if running[i]:status() ~= "running" then return false end
    end
    return true
  end), "the endless tasks did not all start")
  local queued = isolate.spawn(function() touch(path, "ran") end)
  assert(queued:status() == "queued")
  print("end of script")
elseif mode == "lost" or mode == "seen" then
  local task = isolate.spawn(function() error("lost") end)
  assert(task:wait(10))
  if mode == "seen" then assert(not pcall(task.await, task)) end
  task = nil
  collectgarbage()
  collectgarbage()
  print("collected")
elseif mode == "map" then
  ready()
  isolate.map(endless, list, {chunk = 1})
  io.stdout:write("returned\n")
elseif mode == "coroutine-await" then
  -- the standalone interpreter's Ctrl-C hook is on the main thread only
  local task = isolate.spawn(endless)
  coroutine.wrap(function()
    ready()
    task:await()
  end)()
  io.stdout:write("returned\n")
elseif mode == "map-caught" then
  report(pcall(function()
    ready()
    return isolate.map(endless, list, {chunk = 1})
  end))
elseif mode == "run-caught" then
  report(pcall(function()
    ready()
    return isolate.run(endless)
  end))
elseif mode == "map-failed" then
  -- map's own chunk tasks failed and were cancelled: map raised the
  -- error; nothing else is left to warn about
  local ok = pcall(isolate.map, function(x) error("item " .. x) end, list, {chunk = 1})
  assert(not ok)
  collectgarbage()
  collectgarbage()
  print("collected")
elseif mode == "pool-end" then
  -- a pool's task in an endless loop when the script ends: cancelled, so
  -- its to-be-closed variable writes PATH
  local pool = isolate.pool{size = 1}
  local task = pool:spawn(function()
    local x <close> = setmetatable({}, {__close = function() touch(path, "closed") end})
    while true do end
  end)
  assert(eventually(function() return task:status() == "running" end), "the task did not start")
  print("end of script")
elseif mode == "close-caught" then
  -- Ctrl-C while pool:close() waits for an endless task
  local pool = isolate.pool{size = 1}
  local task = pool:spawn(endless)
  report(pcall(function()
    ready()
    pool:close()
  end))
  task:cancel()
  pool:close()
  print("closed")
elseif mode == "nested-run" then
  -- Ctrl-C while run's isolate runs a nested isolate on its own thread
  isolate.run(function() end)           -- the pool prepares states for callers
  assert(eventually(function() return true end, 0.2))
  report(pcall(function()
    ready()
    return isolate.run(function(f)
      return require("isolate").run(f)
    end, endless)
  end))
else
  error("usage: lifecycle6.lua end|lost|seen|map|map-caught|run-caught|map-failed|"
     .. "pool-end|close-caught|nested-run PATH [W]")
end
