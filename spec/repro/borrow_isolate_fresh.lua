-- Regression (fixed): a long string that an __isolate handler returns (the constructor's
-- argument) is borrowed, then popped from the stack: nothing keeps it
-- alive, and a collection before the decode frees it (use after free;
-- a segfault for a string of 1 MB, which malloc unmaps).
--   lua5.4 spec/repro/borrow_isolate_fresh.lua [args|results]
-- Prints "ok" when the string arrives intact.
local isolate = require "isolate"
local side = arg and arg[1] or "args"
local N = 1 << 20

-- the object travels as (constructor, a fresh long string); a second
-- object's __isolate collects garbage meanwhile (any allocation could)
local function objects()
  local fresh = setmetatable({}, {__isolate = function()
    return function(s) return s end, string.rep("y", N) .. ""
  end})
  local collector = setmetatable({}, {__isolate = function()
    collectgarbage(); collectgarbage()
    return function() return 0 end
  end})
  return fresh, collector
end

local s
if side == "args" then
  s = isolate.run(function(o) return o end, objects())
else
  s = isolate.run(function(make) return make() end, objects)
end
assert(s == string.rep("y", N), "wrong bytes")
print("ok")
