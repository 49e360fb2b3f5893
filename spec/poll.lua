-- Bounded waits on real conditions, for the specs and for the isolates
-- they run: `local poll = dofile("spec/poll.lua")`.  Every function here
-- uses only globals and this table, so any of them can travel into an
-- isolate as an upvalue.  A spec never sleeps to let something happen: it
-- polls the condition it needs, with a deadline, and fails on the deadline.
local M = {}

-- wall-clock seconds (os.clock counts the CPU time of every thread)
function M.now()
  return require("socket").gettime()
end

-- Call cond() until it returns true, at most 'seconds' (default 5), a
-- millisecond apart.  Returns whether it came true.
function M.eventually(cond, seconds)
  local socket = require "socket"
  local deadline = socket.gettime() + (seconds or 5)
  while not cond() do
    if socket.gettime() > deadline then return false end
    socket.sleep(0.001)
  end
  return true
end

function M.exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

-- write 'text' (default "") to path, whole
function M.touch(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text or "")
  f:close()
end

-- the contents of path, or nil
function M.read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- a fresh path that no file has yet
function M.marker()
  local path = os.tmpname()
  os.remove(path)
  return path
end

-- wait (bounded, default 10 s) until path exists; whether it does
function M.await_file(path, seconds)
  return M.eventually(function() return M.exists(path) end, seconds or 10)
end

-- busy for 'seconds' of wall-clock time, in Lua
function M.spin(seconds)
  local socket = require "socket"
  local t0 = socket.gettime()
  while socket.gettime() - t0 < seconds do end
end

-- Inside an isolate: wait (bounded, 10 s) for the file 'path' to exist.
function M.gate(path)
  local deadline = os.time() + 10
  local f = io.open(path)
  while not f do
    if os.time() > deadline then error("gate " .. path .. " never opened") end
    f = io.open(path)
  end
  f:close()
end

-- Inside an isolate: sleep 'seconds', then return the other arguments.
function M.sleeper(seconds, ...)
  require("socket").sleep(seconds)
  return ...
end

-- collect until the finalizers of what was dropped have run
function M.gc()
  collectgarbage()
  collectgarbage()
end

-- resident memory of this process, in KiB
function M.rss()
  return tonumber(M.read("/proc/self/status"):match("VmRSS:%s*(%d+)"))
end

-- Inside an isolate: wait for the file 'path' (gate), then send 1..n with
-- isolate.emit ('payload' after each number, if given); returns n.
function M.gatedflood(path, n, payload)
  M.gate(path)
  local isolate = require "isolate"
  for i = 1, n do isolate.emit(i, payload) end
  return n
end

-- In a spec: open the gate 'go' of 'task' (a gatedflood), wait (bounded)
-- until its queue is full (QUEUE - 1 will do: an emitter that found it
-- full waits until it is half empty), then watch it for 0.3 s, sleeping
-- with sleep(seconds): pending must stay <= 1000, the task must run on
-- (held in emit), and resident memory, if 'before' (KiB) is given, must
-- not grow by 20 MiB; as the spec's 'assert' (busted's) says.  Cancels
-- the task.
function M.held(task, go, sleep, assert, before)
  local QUEUE = 1000
  M.touch(go)
  local full = M.eventually(function() return task:pending() >= QUEUE - 1 end, 10)
  local t0, most, grew = M.now(), 0, 0
  while full and M.now() - t0 < 0.3 do
    most = math.max(most, task:pending())
    if before then grew = math.max(grew, M.rss() - before) end
    sleep(0.005)
  end
  most = math.max(most, task:pending())
  local status = task:status()
  task:cancel()
  assert.is_true(task:wait(5), "still running 5 s after cancel()")
  os.remove(go)
  assert.is_true(full, "the queue did not fill within 10 s: pending " .. task:pending())
  assert.is_true(most <= QUEUE, "pending reached " .. most .. ": somebody still waits for the task")
  assert.equal("running", status)
  if before then	-- unbounded, 100 MB in a few tenths of a second; bounded, about 1 MB
    assert.is_true(grew < 20 * 1024, string.format("resident memory grew by %d KiB", grew))
  end
end

return M
