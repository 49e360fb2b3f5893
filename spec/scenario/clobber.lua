-- Lua code given the debug library replaces every value on the stacks of
-- the C functions below it, from an __isolate met while values are sent
-- and from a constructor met while they are made (spec/objects_spec.lua).
-- Each prints its error's first line; nothing may crash.
local isolate = require "isolate"

local function clobber()
  for level = 2, 12 do
    local info = debug.getinfo(level, "S")
    if not info then break end
    if info.what == "C" then
      for i = 1, 40 do
        if not debug.getlocal(level, i) then break end
        debug.setlocal(level, i, 42)
      end
    end
  end
end

local t = {1, "two", {3}}
t[4] = setmetatable({}, {__isolate = function() clobber(); return function() return "made" end end})

local function try(name, fn)
  local ok, err = pcall(fn)
  print(name .. ": " .. (ok and "no error" or tostring(err):match("[^\n]*")))
end

try("encode", function() return isolate.encode(t, "more") end)
try("run's arguments", function() return isolate.run(function(a) return a end, t) end)
try("run's results", function()
  return isolate.run(function(c)
    local r = {1, 2}
    r[3] = setmetatable({}, {__isolate = function() c(); return function() return 1 end end})
    return r, "x"
  end, clobber)
end)
-- only the first value on the stack of run's C function: its own, below
-- the values it sends
local first = setmetatable({}, {__isolate = function()
  for level = 2, 4 do
    local info = debug.getinfo(level, "S")
    if info and info.what == "C" then debug.setlocal(level, 1, 42) break end
  end
  return function() return "made" end
end})
try("run's own", function() return isolate.run(function(a, b) return b end, "x", first) end)
try("spawn's own", function() return isolate.spawn(function(a, b) return b end, "x", first):await() end)
local obj = setmetatable({}, {__isolate = function() return clobber end})
local msg = isolate.encode({1, {2}, obj, "after"})
try("decode", function() return isolate.decode(msg, {trusted = true}) end)
print("after: " .. isolate.run(function() return 3 end))
