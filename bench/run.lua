-- `make bench`: medians over several runs, each against a baseline measured
-- in the same run.  Absolute times drift on a shared machine; ratios hold.
local isolate = require "isolate"
local bench = require "benchlib"

local RUNS = tonumber(os.getenv("BENCH_RUNS")) or 7

local function median(xs)
  table.sort(xs)
  local n = #xs
  return n % 2 == 1 and xs[(n + 1) // 2] or (xs[n // 2] + xs[n // 2 + 1]) / 2
end

-- median over RUNS of the seconds that f() takes to do 'per' operations,
-- divided by 'per': the median time of one operation
local function measure(per, f)
  local xs = {}
  for i = 1, RUNS do
    collectgarbage()
    xs[i] = f() / per
  end
  return median(xs)
end

local function timed(f)
  return function()
    local t0 = bench.now()
    f()
    return bench.now() - t0
  end
end

local function us(s) return string.format("%9.2f us", s * 1e6) end
local function ms(s) return string.format("%9.2f ms", s * 1e3) end

local function report(name, value, unit, base_name, base, goal)
  local ratio = value / base
  print(string.format("%-44s %s   %-36s %s   ratio %5.2f%s", name, unit(value), base_name, unit(base),
    ratio, goal and string.format("  (goal <= %.1f: %s)", goal, ratio <= goal and "met" or "NOT MET") or ""))
end

print(string.format("isolate bench: %d runs each, medians; %d CPUs", RUNS, isolate.cpus()))

-- 1. Round trip of the smallest computation against a bare Lua state.
do
  local N = 2000
  for _ = 1, 200 do isolate.run(function() return 1 end) end   -- warm the pool
  local rt = measure(N, timed(function()
    for _ = 1, N do isolate.run(function() return 1 end) end
  end))
  local ns = measure(N, function() return bench.newstate(N) end)
  report("isolate.run(function() return 1 end)", rt, us,
    "luaL_newstate+openlibs+close", ns, 2.0)
end

-- 2. A table of 1,000,000 integers made in an isolate and returned, against
--    making it in the caller.
do
  local N = 1000000
  local function build()
    local t = {}
    for i = 1, N do t[i] = i end
    return t
  end
  local iso = measure(1, timed(function() isolate.run(build) end))
  local here = measure(1, timed(build))
  report("run: build + return 1e6-integer table", iso, ms, "build it in the caller", here)

  -- the transfer alone: encode + decode of that table, against memcpy of
  -- the encoded bytes
  local t = build()
  local bytes = #isolate.encode(t)
  local codec = measure(1, timed(function() isolate.decode(isolate.encode(t)) end))
  local copy = measure(10, function() return bench.memcpy(bytes, 10) end)
  report(string.format("encode + decode 1e6 integers (%d bytes)", bytes), codec, ms,
    "memcpy of the same bytes", copy)
end
