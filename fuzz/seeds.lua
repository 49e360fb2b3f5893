-- Writes the fuzzer's seed corpus into the folder given as argument:
-- messages of the current format that reach each kind of value, small and
-- large (up to the fuzzer's 1 MB).  `make fuzz` runs it first.
local isolate = require "isolate"
local dir = assert(arg[1], "usage: seeds.lua DIR")

local shared = {"s"}
local cyclic = {1, 2, shared, shared}
cyclic.self = cyclic
local k = 5
local seeds = {
  isolate.encode(),
  isolate.encode(nil, false, true, 0, 127, -1, 300, -70000, 1 << 40, math.mininteger, 1.5, -0.0, 0/0, math.huge),
  isolate.encode("", "short", ("long"):rep(20), "bin\0\255"),
  isolate.encode({1, 2, 3, x = {y = "deep"}, [1.5] = true, [false] = 0}),
  isolate.encode(cyclic),
  isolate.encode(setmetatable({a = 1}, {__index = shared})),
  isolate.encode(string, table.concat, {fmt = string.format}),   -- names (trusted only)
  isolate.encode(function(x) return x + k end),                  -- bytecode (trusted only)
  isolate.encode(_G),
}
local big, deep, wide = {}, {}, {}
for i = 1, 20000 do big[i] = i end
for _ = 1, 199 do deep = {deep} end
for i = 1, 2000 do wide["k" .. i] = {i, i + 0.5} end
seeds[#seeds + 1] = isolate.encode(big)
seeds[#seeds + 1] = isolate.encode(deep)
seeds[#seeds + 1] = isolate.encode(wide)
seeds[#seeds + 1] = isolate.encode(("x"):rep(100000))
for i, s in ipairs(seeds) do
  local f = assert(io.open(string.format("%s/seed%02d", dir, i), "wb"))
  f:write(s)
  f:close()
end
print(#seeds .. " seeds written to " .. dir)
