-- One cold measurement, in the fresh process that runs this script (the
-- way a script does its one big job): `lua5.4 bench/cold.lua <case>`
-- prints one number.  bench/run.lua runs each case in several processes
-- and compares it with its baseline case.
--
--   ints-local, ints-run     1e6 integers: built here; returned by an isolate
--   recs-local, recs-run     100k records {id, name, score}, the same
--   (the *-run cases time from the end of the build in the isolate until
--    the caller holds the result: milliseconds)
--   str-copy, str-run        a 64 MiB string: memcpy into fresh memory;
--                            argument and result of isolate.run (ms)
--   strs-local, strs-run     1e6 strings of 100 bytes: peak resident
--                            memory of the process (MiB)
local bench = require "benchlib"
local case = arg[1]

local function ints()
  local t = {}
  for i = 1, 1000000 do t[i] = i end
  return t
end

local function recs()
  local t = {}
  for i = 1, 100000 do t[i] = {id = i, name = "name " .. i, score = i * 0.5} end
  return t
end

local function strs()
  local t = {}
  for i = 1, 1000000 do t[i] = string.format("%090d%010d", 0, i) end
  return t
end

local function peak()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmHWM:%s*(%d+)")
    if kb then return tonumber(kb) / 1024 end
  end
end

local function ms(s) print(string.format("%.3f", s * 1e3)) end

local build = ({ints = ints, recs = recs, strs = strs})[case:match("^(%a+)%-")]
local how = case:match("%-(%a+)$")

if case == "str-copy" or case == "str-run" then
  local s = string.rep("0123456789abcdef", 4 << 20)
  if case == "str-copy" then
    ms(bench.copyfresh(s))
  else
    local isolate = require "isolate"
    local t0 = bench.now()
    local r = isolate.run(function(x) return x end, s)
    local t = bench.now() - t0
    assert(#r == #s)
    ms(t)
  end
elseif build == nil or (how ~= "local" and how ~= "run") then
  error("unknown case " .. tostring(case))
elseif case:match("^strs") then
  local t
  if how == "local" then t = build()
  else t = require("isolate").run(build) end
  assert(#t == 1000000)
  print(string.format("%.1f", peak()))
elseif how == "local" then
  local t0 = bench.now()
  local t = build()
  ms(bench.now() - t0)
  assert(#t > 0)
else
  local isolate = require "isolate"
  isolate.run(function() return 1 end)	-- the pool is up, as in a script
  local t, built = isolate.run(function() local t = build(); return t, bench.now() end)
  ms(bench.now() - built)
  assert(#t > 0)
end
