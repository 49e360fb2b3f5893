-- Regression (fixed): a task collected while it runs (kept as an orphan) whose results
-- borrow: when it ends, its state is kept for an output nobody will read,
-- until another task is orphaned or the script ends (orphans are buried
-- only then).  Its finalizers do not run; its memory stays.
--   lua5.4 spec/repro/borrow_orphan.lua
-- Prints "ok" when the isolate's finalizer ran within 5 s of its end.
local isolate = require "isolate"
local socket = require "socket"
local marker, go = os.tmpname(), os.tmpname()
os.remove(marker); os.remove(go)

local task = isolate.spawn(function(path, go)
  KEEP = setmetatable({}, {__gc = function() io.open(path, "w"):close() end})
  while not io.open(go) do end
  return string.rep("o", 1100000)
end, marker, go)
while task:status() ~= "running" do end
task = nil
collectgarbage(); collectgarbage()	-- the running task is an orphan now
io.open(go, "w"):close()		-- it ends
local deadline = socket.gettime() + 5
while not io.open(marker) and socket.gettime() < deadline do socket.sleep(0.01) end
local ran = io.open(marker) ~= nil
os.remove(marker); os.remove(go)
assert(ran, "the orphaned isolate's state was not closed after its end")
print("ok")
