-- Regression (fixed): the script ends while a task's output that borrows its isolate's
-- state is not decoded (the task was waited for, its handle kept).  At
-- lua_close the output hands the state to the default pool's preparer,
-- and the process exits before it closes it: the isolate's finalizers
-- never run.  (Before borrowing, the worker closed the state when the
-- job ended, half a second before the end here.)
--   lua5.4 spec/repro/borrow_script_end.lua          (runs itself as a child)
--   lua5.4 spec/repro/borrow_script_end.lua MARKER   (the child)
-- Prints "ok" when the child's isolate finalizer wrote MARKER.
local isolate = require "isolate"
local socket = require "socket"

local function child(marker)
  TASK = isolate.spawn(function(path)
    KEEP = setmetatable({}, {__gc = function()	-- runs when the state closes
      local f = io.open(path, "w"); f:write("closed"); f:close()
    end})
    return string.rep("e", 1100000)
  end, marker)
  assert(TASK:wait())
  socket.sleep(0.5)
end

if arg[1] then return child(arg[1]) end
local marker = os.tmpname()
os.remove(marker)
local i = -1
while arg[i - 1] do i = i - 1 end
assert(os.execute(string.format("%s %s %s", arg[i], arg[0], marker)), "the child failed")
local f = io.open(marker)
local text = f and f:read("a")
if f then f:close() end
os.remove(marker)
assert(text == "closed", "the isolate's finalizer did not run before the process ended")
print("ok")
