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

return M
