-- Regression (fixed): pool:close() while tasks' outputs that borrow are not decoded yet.
-- The preparer ends with the pool; decoding afterwards hands each state
-- to it all the same (pool_closelater): the states stay open, their
-- finalizers do not run, until the last task handle is collected, and
-- then they run on the caller's thread, inside its collector.
--   lua5.4 spec/repro/borrow_pool_close.lua
-- Prints "ok" when every isolate's finalizer ran within 5 s of the decode.
local isolate = require "isolate"
local socket = require "socket"
local dir = os.tmpname()

local pool = isolate.pool{size = 2}
local tasks = {}
for i = 1, 4 do
  tasks[i] = pool:spawn(function(path)
    KEEP = setmetatable({}, {__gc = function() io.open(path, "w"):close() end})
    return string.rep("c", 1100000)
  end, dir .. "." .. i)
end
for i = 1, 4 do assert(tasks[i]:wait()) end
pool:close()
for i = 1, 4 do assert(#tasks[i]:await() == 1100000) end

local function ran()
  local n = 0
  for i = 1, 4 do
    local f = io.open(dir .. "." .. i)
    if f then f:close(); n = n + 1 end
  end
  return n
end
local deadline = socket.gettime() + 5
while ran() < 4 and socket.gettime() < deadline do socket.sleep(0.01) end
local n = ran()
tasks = nil
collectgarbage(); collectgarbage()
local later = ran()
for i = 1, 4 do os.remove(dir .. "." .. i) end
os.remove(dir)
assert(n == 4, string.format("%d of 4 finalizers ran after the decode; %d once the tasks were collected", n, later))
print("ok")
