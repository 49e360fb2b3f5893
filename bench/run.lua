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
    "luaL_newstate+openlibs+close", ns, 0.8)
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
  local returned = measure(1, function()
    local _, built = isolate.run(function() local t = build(); return t, bench.now() end)
    return bench.now() - built
  end)
  report("run: 1e6-integer table returned, after the build", returned, ms, "build it in the caller", here, 1.0)

  -- the transfer alone: encode + decode of that table, against memcpy of
  -- the encoded bytes
  local t = build()
  local bytes = #isolate.encode(t)
  local codec = measure(1, timed(function() isolate.decode(isolate.encode(t)) end))
  local copy = measure(10, function() return bench.memcpy(bytes, 10) end)
  report(string.format("encode + decode 1e6 integers (%d bytes)", bytes), codec, ms,
    "memcpy of the same bytes", copy)
end

-- 3. The same round trip when the caller did other work (here: slept 10 ms)
--    between calls, as a script that calls run now and then does.
do
  local N = 40
  local rt = {}
  for r = 1, RUNS do
    local total = 0
    for _ = 1, N do
      bench.sleep(0.01)
      local t0 = bench.now()
      isolate.run(function() return 1 end)
      total = total + (bench.now() - t0)
    end
    rt[r] = total / N
  end
  local ns = measure(200, function() return bench.newstate(200) end)
  report("run round trip, 10 ms of sleep between calls", median(rt), us,
    "luaL_newstate+openlibs+close", ns, 1.0)
end

-- 4. Many tasks in flight: 10,000 spawned, then all awaited.  Each task
--    needs a fresh state: the machine makes at most CPUs / (one state's
--    cost) of them a second, which bounds the figure.
do
  local N = 10000
  local t = measure(N, timed(function()
    local tasks = {}
    for i = 1, N do tasks[i] = isolate.spawn(function(x) return x end, i) end
    for i = 1, N do tasks[i]:await() end
  end))
  local ns = measure(2000, function() return bench.newstate(2000) end)
  print(string.format("%-44s %9.0f /s   (goal >= 60000/s: %s)", "spawn + await, 10,000 tasks in flight", 1 / t,
    1 / t >= 60000 and "met" or "NOT MET"))
  print(string.format("%-44s %9.0f /s", "  bound: CPUs / (newstate+openlibs+close)", isolate.cpus() / ns))
  report("  the same, per task", t, us, "luaL_newstate+openlibs+close", ns)
end

-- 5. map over 100,000 small items, against a serial loop in the caller.
do
  local N = 100000
  local list = {}
  for i = 1, N do list[i] = i end
  local function sq(x) return x * x end
  local m = measure(1, timed(function() isolate.map(sq, list) end))
  local serial = measure(1, timed(function()
    local out = {}
    for i = 1, N do out[i] = sq(list[i]) end
  end))
  print(string.format("%-44s %9.0f items/s   (goal >= 1000000/s: %s)", "map(x * x) over 100,000 items", N / m,
    N / m >= 1e6 and "met" or "NOT MET"))
  report("  the same", m, ms, "a serial loop in the caller", serial)

  -- items of about half a microsecond and of a few microseconds of work
  -- each: from the second on, map must beat the loop (the issue's promise)
  local M = 20000
  local small = {}
  for i = 1, M do small[i] = i end
  for _, rounds in ipairs{60, 200} do
    local function work(x)
      local s = 0
      for i = 1, rounds do s = s + (x * i) % 7 end
      return s
    end
    local per = measure(M, timed(function() for i = 1, M do work(small[i]) end end))
    local mm = measure(1, timed(function() isolate.map(work, small) end))
    local ss = measure(1, timed(function()
      local out = {}
      for i = 1, M do out[i] = work(small[i]) end
    end))
    report(string.format("map, 20,000 items of %.1f us each", per * 1e6), mm, ms,
      "a serial loop in the caller", ss, per >= 1.5e-6 and 1.0 or nil)
  end
end

-- 6. CPU-bound work: one job per CPU spawned at once, against the same
--    jobs run one after another in the caller.
do
  local cpus = isolate.cpus()
  local function work(n)
    local x = 0
    for i = 1, n do x = x + i % 7 end
    return x
  end
  local W = 2e7
  local par = measure(1, timed(function()
    local tasks = {}
    for i = 1, cpus do tasks[i] = isolate.spawn(work, W) end
    for i = 1, cpus do tasks[i]:await() end
  end))
  local ser = measure(1, timed(function()
    for _ = 1, cpus do work(W) end
  end))
  local speedup = ser / par
  print(string.format("%-44s %9.2f x   (goal >= %.2f: %s)", string.format("speedup of %d CPU-bound jobs", cpus),
    speedup, 0.97 * cpus, speedup >= 0.97 * cpus and "met" or "NOT MET"))

  -- 7. a tight loop inside an isolate against the same loop in the caller:
  --    no hook runs in a healthy isolate
  local inside = measure(1, timed(function() isolate.run(work, W) end))
  local here = measure(1, timed(function() work(W) end))
  print(string.format("%-44s %9.2f x   (goal >= 0.97: %s)", "tight loop speed, isolate / caller",
    here / inside, here / inside >= 0.97 and "met" or "NOT MET"))
end

-- 8. Cancel: from task:cancel() of a running loop until await raises.
do
  local xs = {}
  for r = 1, RUNS do
    local task = isolate.spawn(function() while true do end end)
    while task:status() ~= "running" do end
    local t0 = bench.now()
    task:cancel()
    pcall(task.await, task)
    xs[r] = bench.now() - t0
  end
  local m = median(xs)
  print(string.format("%-44s %s   (goal <= 2 ms: %s)", "cancel of a running loop until await raises",
    ms(m), m <= 0.002 and "met" or "NOT MET"))
end

-- 9. A task that captures dkjson, in a pool whose init requires it,
--    against a bare task in the same kind of pool; calls 2 ms apart, as a
--    script makes them, so that idle workers have their next states ready.
do
  local ok, json = pcall(require, "dkjson")
  if not ok then
    print("dkjson not installed: skipped the init figure")
  else
    local N = 60
    local plain = isolate.pool{size = isolate.cpus()}
    local ready = isolate.pool{size = isolate.cpus(), init = function() require "dkjson" end}
    local function bare() return 1 end
    local function withjson() return json.version end   -- captures dkjson, does nothing with it
    local function spaced(pool, f)
      return function()
        local total = 0
        for _ = 1, N do
          bench.sleep(0.002)
          local t0 = bench.now()
          pool:run(f)
          total = total + (bench.now() - t0)
        end
        return total
      end
    end
    for _ = 1, 5 do ready:run(withjson); plain:run(bare) end
    local t = measure(N, spaced(ready, withjson))
    local b = measure(N, spaced(plain, bare))
    local cold = measure(N, spaced(plain, withjson))
    local rb = measure(N, spaced(ready, bare))
    report("task capturing dkjson, pool init requires it", t, us, "a bare task, same pool", rb, 1.2)
    report("  the same", t, us, "a bare task, pool without init", b)
    report("  the same without init (require per task)", cold, us, "a bare task, pool without init", b)
    plain:close()
    ready:close()
  end
end

-- 10. Messages: isolate.emit of small values in a task, read with
--     task:messages() by the caller as they come.
do
  local N = 200000
  local t = measure(N, timed(function()
    local task = isolate.spawn(function(n)
      local emit = isolate.emit
      for i = 1, n do emit(i) end
    end, N)
    for _ in task:messages() do end
    task:await()
  end))
  print(string.format("%-44s %9.0f /s   (goal >= 500000/s: %s)", "emit -> receive, 200,000 small messages", 1 / t,
    1 / t >= 500000 and "met" or "NOT MET"))
end

-- 11. A round trip awaited from a coroutine through isolate.luv (the loop
--     runs while the task does), against the blocking run.
do
  local ok, uv = pcall(require, "luv")
  if not ok then
    print("luv not installed: skipped the event loop figure")
  else
    local iso = require "isolate.luv"
    local N = 2000
    local function trivial() return 1 end
    local looped = measure(N, function()
      local t
      coroutine.wrap(function()
        local t0 = bench.now()
        for _ = 1, N do iso.run(trivial) end
        t = bench.now() - t0
      end)()
      uv.run()
      return t
    end)
    local blocking = measure(N, timed(function() for _ = 1, N do isolate.run(trivial) end end))
    report("run(function() return 1 end) via isolate.luv", looped, us, "the blocking isolate.run", blocking, 1.5)
  end
end

-- 12. Cold transfers: each measurement in a fresh process (bench/cold.lua),
--     as a script that does its one big job; each against its baseline,
--     also measured in fresh processes of this run.
do
  local lua = arg[-1] or "lua5.4"
  local function cold(case)
    local xs = {}
    local env, name = case:match("^(%S+=%S+) (.+)$")	-- "NAME=value case"
    for r = 1, RUNS do
      local p = assert(io.popen(string.format("%s %q bench/cold.lua %s", env and ("env " .. env) or "",
        lua, name or case)))
      local out = p:read("a")
      p:close()
      xs[r] = assert(tonumber(out:match("^%s*(%S+)")), "bench/cold.lua " .. case .. ": " .. out)
    end
    return median(xs)
  end
  local function ratio(name, case, base_name, base_case, goal, unit)
    local v, b = cold(case), cold(base_case)
    print(string.format("%-44s %9.2f %s   %-36s %9.2f %s   ratio %5.2f%s", name, v, unit or "ms", base_name, b,
      unit or "ms", v / b, goal and string.format("  (goal <= %.1f: %s)", goal, v / b <= goal and "met" or "NOT MET") or ""))
  end
  ratio("cold: 1e6 integers returned, after the build", "ints-run", "building them in the caller", "ints-local", 0.5)
  -- what reading, writing and lending array parts in place bought
  -- (src/luatable.h)
  ratio("  the same, arrays in place and lent", "ints-run", "through the C API (ISOLATE_API_ONLY)",
    "ISOLATE_API_ONLY=1 ints-run")
  ratio("cold: 100k records returned, after the build", "recs-run", "building them in the caller", "recs-local", 0.6)
  ratio("cold: 64 MiB string, argument and result of run", "str-run", "memcpy into fresh memory", "str-copy", 2.0)
  ratio("cold: peak RSS returning 1e6 strings of 100 B", "strs-run", "building them in the caller", "strs-local", 1.3, "MiB")
end

-- 13. The codec against lua-cjson on the same 100k records (warm, the
--     collector stopped during each measurement on both sides).
do
  local ok, cjson = pcall(require, "cjson")
  if not ok then
    print("lua-cjson not installed: skipped the cjson figure")
  else
    local recs = {}
    for i = 1, 100000 do recs[i] = {id = i, name = "name " .. i, score = i * 0.5} end
    local function stopped(f)
      return function()
        collectgarbage()
        collectgarbage("stop")
        local t0 = bench.now()
        f()
        local t = bench.now() - t0
        collectgarbage("restart")
        return t
      end
    end
    local iso = measure(1, stopped(function() isolate.decode(isolate.encode(recs)) end))
    local cj = measure(1, stopped(function() cjson.decode(cjson.encode(recs)) end))
    report("encode + decode, 100k records", iso, ms, "cjson.encode + cjson.decode", cj, 0.2)
  end
end
