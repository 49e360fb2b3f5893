local isolate = require "isolate"
local socket = require "socket"

-- Inside an isolate: say "here" through a file, then wait (bounded) for the
-- other one's file.  True only if the two isolates ran at the same time.
local function meet(mine, theirs)
  io.open(mine, "w"):close()
  local deadline = os.time() + 10
  while os.time() < deadline do
    local f = io.open(theirs)
    if f then f:close() return true end
  end
  return false
end

describe("isolate.spawn", function()
  it("returns a task at once; await returns its results", function()
    local task = isolate.spawn(function(a, b) return a * b, "done" end, 6, 7)
    assert.equal("userdata", type(task))
    assert.matches("^isolate.Task ", tostring(task))
    local x, y = task:await()
    assert.equal(42, x)
    assert.equal("done", y)
  end)

  it("runs two closures in parallel", function()
    if isolate.cpus() < 2 then
      pending("one CPU: the default pool has one worker")
      return
    end
    local base = os.tmpname()
    local a, b = base .. ".a", base .. ".b"
    local t1 = isolate.spawn(function() return meet(a, b) end)
    local t2 = isolate.spawn(function() return meet(b, a) end)
    local ok1, ok2 = t1:await(), t2:await()
    os.remove(a); os.remove(b); os.remove(base)
    assert.is_true(ok1 and ok2, "the two isolates did not overlap")
  end)

  it("await returns the same results each time", function()
    local task = isolate.spawn(function() return {1, 2}, nil, 3 end)
    local r1 = table.pack(task:await())
    local r2 = table.pack(task:await())
    assert.equal(3, r1.n)
    assert.equal(3, r2.n)
    assert.equal(r1[1], r2[1])
    assert.same({1, 2}, r2[1])
  end)

  it("await raises the same RemoteError each time", function()
    local task = isolate.spawn(function() error({code = 1}) end)
    local ok1, e1 = pcall(task.await, task)
    local ok2, e2 = pcall(task.await, task)
    assert.is_false(ok1)
    assert.is_false(ok2)
    assert.equal(isolate.RemoteError, getmetatable(e1))
    assert.equal(e1, e2)
    assert.equal(1, e1.value.code)
  end)

  it("tells its status", function()
    local task = isolate.spawn(function() return 1 end)
    assert.matches("^isolate.Task %d+ %(%a+%)$", tostring(task))
    task:await()
    assert.equal("done", task:status())
    assert.is_true(task:done())
    local failing = isolate.spawn(function() error("x") end)
    pcall(failing.await, failing)
    assert.equal("failed", failing:status())
    assert.matches("%(failed%)$", tostring(failing))
  end)

  it("lets a task be collected while it runs", function()
    local marker = os.tmpname()
    os.remove(marker)
    isolate.spawn(function()
      local f = io.open(marker, "w"); f:write("ran"); f:close()
      return string.rep("x", 1000)
    end)
    collectgarbage()
    collectgarbage()
    -- the work goes on: wait for its mark, bounded
    local deadline, content = os.time() + 10, nil
    repeat
      local f = io.open(marker)
      if f then content = f:read("a"); f:close() end
    until content == "ran" or os.time() > deadline
    os.remove(marker)
    assert.equal("ran", content)
  end)

  it("spawns and awaits inside isolates without deadlock, past the pool size", function()
    local depth = isolate.cpus() + 2
    local function nest(n)
      if n == 0 then return 0 end
      return 1 + isolate.spawn(nest, n - 1):await()
    end
    assert.equal(depth, isolate.run(nest, depth))
  end)
end)

describe("many tasks", function()
  it("run 200 at once and each returns its own results, awaited in any order", function()
    local tasks = {}
    for i = 1, 200 do
      tasks[i] = isolate.spawn(function(n)
        local t = {}
        for k = 1, n do t[k] = k * n end
        return n, t
      end, i)
    end
    for i = 200, 1, -3 do      -- out of order, and some twice below
      local n, t = tasks[i]:await()
      assert.equal(i, n)
      assert.equal(i, #t)
      assert.equal(i * i, t[i])
    end
    for i = 1, 200 do
      assert.equal(i, (tasks[i]:await()))
    end
  end)

  it("spawned from several isolates at once, nested, all end", function()
    local function tree(depth, width)
      if depth == 0 then return 1 end
      local children = {}
      for i = 1, width do children[i] = isolate.spawn(tree, depth - 1, width) end
      local sum = 0
      for i = width, 1, -1 do sum = sum + children[i]:await() end
      return sum
    end
    local roots = {}
    for i = 1, 4 do roots[i] = isolate.spawn(tree, 3, 3) end
    for i = 1, 4 do assert.equal(27, roots[i]:await()) end
  end)

  it("mix failures and results without mixing them up", function()
    local tasks = {}
    for i = 1, 60 do
      tasks[i] = isolate.spawn(function(n)
        if n % 3 == 0 then error({n = n}) end
        if n % 5 == 0 then os.exit() end
        return n
      end, i)
    end
    for i = 1, 60 do
      local ok, r = pcall(tasks[i].await, tasks[i])
      if i % 3 == 0 then
        assert.is_false(ok); assert.equal("error", r.kind); assert.equal(i, r.value.n)
      elseif i % 5 == 0 then
        assert.is_false(ok); assert.equal("exit", r.kind)
      else
        assert.is_true(ok); assert.equal(i, r)
      end
    end
  end)
end)

-- trials of the re-entrancy specs, each of which spins until its task is
-- done: under valgrind, which runs one thread at a time, far fewer
local TRIALS = os.getenv("ISOLATE_SPEC_UNDER_TOOL") and 100 or 1000

describe("a task's results", function()
  local function big() local t = {} for i = 1, 20000 do t[i] = {i} end return t end

  it("survive awaits re-entered from finalizers while they are decoded: all get the same results", function()
    local task = isolate.spawn(big)
    local got = {}
    for _ = 1, 300 do
      setmetatable({}, {__gc = function()
        local ok, r = pcall(task.await, task)
        got[#got + 1] = ok and r or tostring(r)
      end})
    end
    local r = task:await()
    collectgarbage()
    assert.equal(20000, #r)
    assert.equal(20000, r[20000][1])
    for i = 1, #got do assert.equal(r, got[i]) end
    assert.equal(r, task:await())
  end)

  it("survive an await re-entered while the first await takes them from the task", function()
    local bad, armed, current = 0, false, nil
    local function bomb()
      setmetatable({}, {__gc = function()
        if armed then armed = false; pcall(current.await, current) end
        bomb()
      end})
    end
    bomb()
    collectgarbage("generational")
    for trial = 1, TRIALS // 2 do
      local t = isolate.spawn(function() return "result" end)
      while not t:done() do socket.sleep(0.0001) end	-- (sleeps: under valgrind a busy loop starves the worker)
      current = t
      for _ = 1, trial % 11 do local _ = {} end
      armed = true
      local ok, r = pcall(t.await, t)
      armed = false
      if not ok or r ~= "result" then bad = bad + 1 end
    end
    collectgarbage("incremental")
    assert.equal(0, bad)
  end)

  it("are the same objects for an await re-entered while the first caches them", function()
    local bad, armed, current, inner = 0, false, nil, nil
    local function bomb()
      setmetatable({}, {__gc = function()
        if armed then
          local ok, r = pcall(current.await, current)
          if ok then inner = r; armed = false end
        end
        bomb()
      end})
    end
    bomb()
    collectgarbage("generational")
    for trial = 1, TRIALS do
      local t = isolate.spawn(function() return {} end)
      while not t:done() do socket.sleep(0.0001) end	-- (sleeps: under valgrind a busy loop starves the worker)
      current, inner = t, nil
      for _ = 1, trial % 11 do local _ = {} end
      armed = true
      local ok, outer = pcall(t.await, t)
      armed = false
      if not ok or (inner and inner ~= outer) or t:await() ~= outer then bad = bad + 1 end
    end
    collectgarbage("incremental")
    assert.equal(0, bad)
  end)

  it("are safe from user values replaced with the debug library", function()
    local t = isolate.spawn(function() return 1 end)
    debug.setuservalue(t, io.stdout, 2)
    assert.equal(1, t:await())
    local t2 = isolate.spawn(function() return 2 end)
    t2:await()
    debug.setuservalue(t2, "not a table", 1)
    assert.has_error(function() t2:await() end, "isolate: the task's results were replaced")
  end)

  it("hide their output's metatable, so that no __gc frees it by hand", function()
    local t = isolate.spawn(big)
    assert.equal(20000, #t:await())
    assert.equal(false, getmetatable(debug.getuservalue(t, 2)))
  end)

  it("survive an explicit __gc of the task while they are decoded", function()
    local task = isolate.spawn(big)
    for _ = 1, 300 do setmetatable({}, {__gc = function() getmetatable(task).__gc(task) end}) end
    local ok, r = pcall(task.await, task)
    assert.is_true(ok, tostring(r))
    assert.equal(20000, #r)
    -- closed before its results were taken: a clear error
    local t2 = isolate.spawn(function() return 1 end)
    getmetatable(t2).__gc(t2)
    assert.has_error(function() t2:await() end, "isolate: task is closed")
    assert.equal("closed", t2:status())
    assert.is_false(t2:done())
  end)

  it("are decoded after the modules they name are loaded, with no user code in between", function()
    package.preload["spec.fake.loader"] = function()
      -- a loader that awaits the very task being decoded
      local r = _G.pending_task:await()
      return {r = r}
    end
    local mod = {}
    package.loaded["spec.fake.loader"] = mod
    _G.pending_task = isolate.spawn(function() return mod, {1, 2, 3} end)
    package.loaded["spec.fake.loader"] = nil
    local ok, m, t = pcall(_G.pending_task.await, _G.pending_task)
    _G.pending_task, package.preload["spec.fake.loader"], package.loaded["spec.fake.loader"] = nil, nil, nil
    -- the loader's await re-enters the decode of the same output: an error
    -- (a loop while loading) or the results, never a crash
    if ok then assert.same({1, 2, 3}, t) else assert.is_not_nil(m) end
  end)

  it("are refused past 200 levels of nested isolates, with a clear error", function()
    local function nest(n)
      if n == 0 then return 0 end
      return 1 + isolate.run(nest, n - 1)
    end
    assert.equal(150, isolate.run(nest, 150))
    local ok, err = pcall(isolate.run, nest, 20000)
    assert.is_false(ok)
    assert.equal("error", err.kind)
    assert.matches("isolate: isolates nested more than 200 deep$", err.message)
  end)

  it("come back from nested isolates each deep in pcalls, whatever their C stack", function()
    local function deep(n, p)
      local function rec(k)
        if k == 0 then return n == 0 and 0 or 1 + isolate.run(deep, n - 1, p) end
        local ok, v = pcall(rec, k - 1)
        if not ok then error(v, 0) end
        return v
      end
      return rec(p)
    end
    assert.equal(100, isolate.run(deep, 100, 180))
  end)
end)

describe("task:await(timeout)", function()
  it("raises an isolate.TimeoutError when the task is still running, and the task goes on", function()
    local task = isolate.spawn(function() local t0 = os.clock() while os.clock() - t0 < 0.3 do end return "late" end)
    local ok, err = pcall(task.await, task, 0.01)
    assert.is_false(ok)
    assert.equal(isolate.TimeoutError, getmetatable(err))
    assert.equal(0.01, err.timeout)
    assert.matches("^isolate: task %d+ did not end within 0.01", err.message)
    assert.equal(err.message, tostring(err))
    assert.equal("late", task:await())
    assert.equal("late", task:await(0))
  end)

  it("times out inside an isolate on a task that is still queued", function()
    local ok, kind = isolate.run(function()
      local t = isolate.spawn(function() local t0 = os.clock() while os.clock() - t0 < 2 do end end)
      local ok, e = pcall(t.await, t, 0.05)
      return ok, getmetatable(e) == isolate.TimeoutError and "TimeoutError" or tostring(e)
    end)
    assert.is_false(ok)
    assert.equal("TimeoutError", kind)
  end)

  it("polls without starting threads, and at once with a timeout of 0", function()
    local function threads()
      for line in io.lines("/proc/self/status") do
        local n = line:match("^Threads:%s*(%d+)")
        if n then return tonumber(n) end
      end
    end
    local before = threads()
    local during = isolate.run(function(count)
      local tasks = {}
      for i = 1, 100 do tasks[i] = isolate.spawn(function() local t0 = os.clock() while os.clock() - t0 < 0.2 do end end) end
      for _ = 1, 3 do
        for i = 1, #tasks do pcall(tasks[i].await, tasks[i], 0) end
      end
      return count()
    end, threads)
    assert.is_true(during <= before + 2, "threads: " .. before .. " before, " .. during .. " while polling")
    -- a wall clock: os.clock counts the CPU time of every thread
    package.cpath = "build/spec/?.so;" .. package.cpath
    local clock = require("posix").monotonic
    local t = isolate.spawn(function() local t0 = os.clock() while os.clock() - t0 < 0.5 do end end)
    local t0 = clock()
    for _ = 1, 20 do pcall(t.await, t, 0) end
    -- (valgrind runs one thread at a time: a poll waits for its turn)
    if os.getenv("ISOLATE_SPEC_UNDER_TOOL") == nil then
      assert.is_true(clock() - t0 < 0.1, "20 polls took " .. (clock() - t0) .. " s")
    end
  end)

  it("takes math.huge for no limit: a queued task is then run by the waiting worker", function()
    local n = isolate.cpus() + 1
    assert.equal(n, isolate.run(function(count)
      local parents = {}
      for i = 1, count do
        parents[i] = isolate.spawn(function()
          return isolate.spawn(function() return 1 end):await(math.huge)
        end)
      end
      local sum = 0
      for i = 1, count do sum = sum + parents[i]:await(math.huge) end
      return sum
    end, n))
  end)

  it("checks its argument", function()
    local task = isolate.spawn(function() return 1 end)
    assert.has_error(function() task:await(-1) end, "bad argument #1 to 'await' (timeout must be a number >= 0)")
    assert.has_error(function() task:await("soon") end, "bad argument #1 to 'await' (number expected, got string)")
    assert.equal(1, task:await(nil))
  end)

  it("shows a task's full id", function()
    local task = isolate.spawn(function() return 1 end)
    task:await()
    assert.matches("^isolate.Task %d+ %(done%)$", tostring(task))
  end)
end)

describe("task:wait and task:result", function()
  it("wait: true once the task has ended, false on timeout, never the task's error", function()
    local slow = isolate.spawn(function() local t0 = os.clock() while os.clock() - t0 < 0.3 do end error("late") end)
    assert.is_false(slow:wait(0))
    assert.is_true(slow:wait())
    assert.is_true(slow:wait(0))
    assert.equal("failed", slow:status())
    local ok, err = pcall(slow.await, slow)
    assert.is_false(ok)
    assert.matches("late$", err.message)
    local t = isolate.spawn(function() return 1, 2 end)
    assert.is_true(t:wait(math.huge))
    assert.same({1, 2}, {t:await()})
    assert.has_error(function() t:wait(-1) end, "bad argument #1 to 'wait' (timeout must be a number >= 0)")
  end)

  it("result: true and the results, or false and the RemoteError, like pcall", function()
    local good = isolate.spawn(function() return 1, nil, "three" end)
    assert.same({n = 4, true, 1, nil, "three"}, table.pack(good:result()))
    local bad = isolate.spawn(function() error({code = 3}) end)
    local ok, err = bad:result()
    assert.is_false(ok)
    assert.equal(isolate.RemoteError, getmetatable(err))
    assert.equal(3, err.value.code)
    local ok2, err2 = bad:result()
    assert.is_false(ok2)
    assert.equal(err, err2)
  end)
end)
