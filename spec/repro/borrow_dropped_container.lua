-- Regression (fixed): only the values on the stack are kept alive.  A long string that
-- is reachable only through a table (or an upvalue) of run's arguments or
-- of a task's results is freed if Lua code that runs meanwhile drops it:
--   args     a hook, called while run waits for its queued job (pool of
--            one busy worker), empties the argument table and collects
--   results  an __isolate handler, called while the results are encoded,
--            empties a result table encoded before it and collects
-- (use after free: a segfault here, a report under ASan)
--   lua5.4 spec/repro/borrow_dropped_container.lua [args|results]
-- Prints "ok" when the string arrives intact.
local isolate = require "isolate"
local side = arg and arg[1] or "args"
local N = 1 << 20

local r
if side == "args" then
  local go = os.tmpname()
  os.remove(go)
  local pool = isolate.pool{size = 1}
  local busy = pool:spawn(function(path)	-- holds the only worker until 'go'
    while not io.open(path) do end
  end, go)
  while busy:status() ~= "running" do end
  local t = {string.rep("x", N)}
  debug.sethook(function()			-- run's wait calls it once
    local info = debug.getinfo(2, "S")
    if info and info.source == "=(isolate wait)" and t[1] then
      t[1] = nil
      collectgarbage(); collectgarbage()
      io.open(go, "w"):close()		-- the job starts now, reads t[1]
    end
  end, "", 1)
  r = pool:run(function(t) return t[1] end, t)
  debug.sethook()
  os.remove(go)
  r = r == string.rep("x", N)
else
  local t = isolate.run(function(n)
    local t = {string.rep("x", n)}
    local o = setmetatable({}, {__isolate = function()
      t[1] = nil
      collectgarbage(); collectgarbage()
      return function() return 0 end
    end})
    return t, o
  end, N)
  r = t[1] == string.rep("x", N)
end
assert(r, "wrong bytes")
print("ok")
