local isolate = require "isolate"
local poll = dofile("spec/poll.lua")
local now, eventually, touch, marker, await_file, spin =
  poll.now, poll.eventually, poll.touch, poll.marker, poll.await_file, poll.spin

-- the error that f(...) raises (it must raise), as a string
local function message_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "no error")
  return tostring(err)
end

-- the threads of this process, from /proc
local function threads()
  for line in io.lines("/proc/self/status") do
    local n = line:match("^Threads:%s*(%d+)")
    if n then return tonumber(n) end
  end
end

-- inside an isolate: the OS name of its thread
local function thread_name()
  local f = assert(io.open("/proc/thread-self/comm"))
  local name = f:read("l")
  f:close()
  return name
end

local FIELDS = {"workers", "busy", "queued", "done", "failed", "cancelled"}

-- the fields of stats() that the API names, each checked to be an integer
local function counts(s)
  assert.equal("table", type(s))
  local t = {}
  for _, k in ipairs(FIELDS) do
    assert.equal("integer", math.type(s[k]), "field " .. k .. ": " .. tostring(s[k]))
    t[k] = s[k]
  end
  return t
end

describe("isolate.pool", function()
  it("runs, spawns and maps like the module's functions", function()
    local pool <close> = isolate.pool{size = 2}
    assert.same({5, "ab"}, {pool:run(function(a, b) return a + b, "ab" end, 2, 3)})
    local task = pool:spawn(function(x) return x * 2, nil, "three" end, 21)
    assert.matches("^isolate.Task ", tostring(task))
    assert.same({n = 3, 42, nil, "three"}, table.pack(task:await()))
    assert.same({1, 4, 9, 16}, pool:map(function(x) return x * x end, {1, 2, 3, 4}))
    local ok, err = pcall(pool.run, pool, function() error("in a pool") end)
    assert.is_false(ok)
    assert.equal(isolate.RemoteError, getmetatable(err))
    assert.matches("in a pool$", err.message)
    local merr = select(2, pcall(pool.map, pool, function(x) if x == 3 then error("three") end return x end, {1, 2, 3, 4}))
    assert.equal(3, merr.index)
  end)

  it("shows as an isolate.Pool", function()
    local pool <close> = isolate.pool{size = 1}
    assert.matches("^isolate.Pool", tostring(pool))
  end)

  it("runs apart from the default pool", function()
    local pool <close> = isolate.pool{size = 1}
    local release = marker()
    local blocker = pool:spawn(function() return await_file(release, 10) end)
    assert.is_true(eventually(function() return blocker:status() == "running" end))
    local t = isolate.spawn(function() return "default" end)
    local ran = t:wait(5)
    touch(release)
    assert.is_true(ran, "the default pool waited for a full pool of another")
    assert.equal("default", t:await())
    assert.is_true(blocker:await())
    os.remove(release)
  end)

  describe("size", function()
    it("is its number of workers: tasks past that wait, first in first out", function()
      local pool <close> = isolate.pool{size = 1}
      assert.equal(1, pool:stats().workers)
      local path = os.tmpname()
      local tasks = {}
      for i = 1, 20 do
        tasks[i] = pool:spawn(function()
          local f = assert(io.open(path, "a"))
          f:write(i, "\n")
          f:close()
        end)
      end
      for i = 1, 20 do tasks[i]:await() end
      local lines = {}
      for line in io.lines(path) do lines[#lines + 1] = tonumber(line) end
      os.remove(path)
      local expected = {}
      for i = 1, 20 do expected[i] = i end
      assert.same(expected, lines)
    end)

    it("runs that many at once, no more", function()
      local pool <close> = isolate.pool{size = 2}
      local release = marker()
      local tasks = {}
      for i = 1, 3 do tasks[i] = pool:spawn(function() return await_file(release, 10) end) end
      local two = eventually(function() return tasks[1]:status() == "running" and tasks[2]:status() == "running" end)
      local third = tasks[3]:status()
      touch(release)
      assert.is_true(two, "two tasks did not run at once")
      assert.equal("queued", third)
      for i = 1, 3 do assert.is_true(tasks[i]:await()) end
      os.remove(release)
    end)

    it("defaults to the number of CPUs", function()
      local pool <close> = isolate.pool()
      assert.equal(isolate.cpus(), pool:stats().workers)
      assert.equal(1, pool:run(function() return 1 end))
      local empty <close> = isolate.pool{}
      assert.equal(isolate.cpus(), empty:stats().workers)
    end)
  end)

  describe("name", function()
    it("is isolate.name() inside its isolates; nil in the default pool's", function()
      local pool <close> = isolate.pool{size = 1, name = "crunch"}
      assert.equal("crunch", pool:run(function() return require("isolate").name() end))
      assert.same({"crunch", "crunch"}, pool:map(function() return require("isolate").name() end, {1, 2}))
      assert.is_nil(isolate.run(function() return require("isolate").name() end))
      local unnamed <close> = isolate.pool{size = 1}
      assert.is_nil(unnamed:run(function() return require("isolate").name() end))
    end)

    it("starts the OS name of its worker threads, cut to 15 bytes", function()
      -- (spawn: run may run its isolate in the caller's own thread)
      local pool <close> = isolate.pool{size = 1, name = "crunch"}
      assert.matches("^crunch", pool:spawn(thread_name):await())
      local long = "a-rather-long-pool-name"
      local named <close> = isolate.pool{size = 1, name = long}
      assert.equal(long:sub(1, 15), named:spawn(thread_name):await())
    end)
  end)

  describe("memory_limit", function()
    local LIMIT = 8 * 1024 * 1024

    it("fails an isolate past it with a RemoteError of kind memory; the next task runs", function()
      local pool <close> = isolate.pool{size = 1, memory_limit = LIMIT}
      local ok, err = pcall(pool.run, pool, function()
        local t = {}
        for i = 1, 1e7 do t[i] = i end
        return #t
      end)
      assert.is_false(ok)
      assert.equal(isolate.RemoteError, getmetatable(err))
      assert.equal("memory", err.kind)
      local ok2, err2 = pcall(pool.run, pool, function() return #string.rep("x", 16 * 1024 * 1024) end)
      assert.is_false(ok2)
      assert.equal("memory", err2.kind)
      assert.equal(10000, pool:run(function()
        local t = {}
        for i = 1, 10000 do t[i] = i end
        return #t
      end))
      -- the process and the default pool are unharmed, and not limited
      assert.equal(2e6, isolate.run(function() local t = {} for i = 1, 2e6 do t[i] = i end return #t end))
    end)

    it("lets a task within it run", function()
      local pool <close> = isolate.pool{size = 2, memory_limit = LIMIT}
      assert.equal(1024 * 1024, pool:run(function() return #string.rep("y", 1024 * 1024) end))
      assert.same({2, 4, 6}, pool:map(function(x) return x * 2 end, {1, 2, 3}))
    end)
  end)

  describe("init", function()
    it("runs in every fresh state before the task: its globals are the task's", function()
      local pool <close> = isolate.pool{size = 2, init = function()
        helper = function(x) return x * 2 end
      end}
      assert.equal(42, pool:run(function() return helper(21) end))
      assert.equal(42, pool:spawn(function() return helper(21) end):await())
      assert.same({2, 4, 6}, pool:map(function(x) return helper(x) end, {1, 2, 3}, {chunk = 1}))
    end)

    it("carries its upvalues", function()
      local base = 10
      local pool <close> = isolate.pool{size = 1, init = function() offset = base end}
      assert.equal(11, pool:run(function() return offset + 1 end))
    end)

    it("can require a module for the task", function()
      local pool <close> = isolate.pool{size = 1, init = function()
        local json = require "dkjson"
        encode = json.encode
      end}
      assert.equal("[1,2,3]", pool:run(function() return encode({1, 2, 3}) end))
    end)

    it("that raises fails the task with a RemoteError that carries its message", function()
      local pool <close> = isolate.pool{size = 1, init = function() error("init broke") end}
      local ok, err = pcall(pool.run, pool, function() return "ran" end)
      assert.is_false(ok)
      assert.equal(isolate.RemoteError, getmetatable(err))
      assert.matches("init broke", err.message, 1, true)
    end)
  end)

  describe("stats", function()
    it("counts done and failed tasks", function()
      local pool <close> = isolate.pool{size = 2}
      assert.same({workers = 2, busy = 0, queued = 0, done = 0, failed = 0, cancelled = 0}, counts(pool:stats()))
      for i = 1, 3 do assert.equal(i, pool:run(function() return i end)) end
      pcall(pool.run, pool, function() error("x") end)
      assert.is_true(eventually(function() return pool:stats().busy == 0 end))
      assert.same({workers = 2, busy = 0, queued = 0, done = 3, failed = 1, cancelled = 0}, counts(pool:stats()))
    end)

    it("counts busy workers, queued and cancelled tasks", function()
      local pool <close> = isolate.pool{size = 1}
      local release = marker()
      local blocker = pool:spawn(function() return await_file(release, 10) end)
      local started = eventually(function() return blocker:status() == "running" end)
      local queued = pool:spawn(function() return 1 end)
      local s1 = pool:stats()
      local cancelled = queued:cancel()
      local s2 = pool:stats()
      touch(release)
      assert.is_true(started)
      assert.is_true(blocker:await())
      os.remove(release)
      assert.equal(1, s1.busy)
      assert.equal(1, s1.queued)
      assert.is_true(cancelled)
      assert.equal(0, s2.queued)
      assert.equal(1, s2.cancelled)
      assert.is_true(eventually(function() return pool:stats().busy == 0 end))
      assert.same({workers = 1, busy = 0, queued = 0, done = 1, failed = 0, cancelled = 1}, counts(pool:stats()))
    end)

    it("of the default pool: isolate.stats()", function()
      local s = counts(isolate.stats())
      assert.equal(isolate.cpus(), s.workers)
      isolate.run(function() return 1 end)
      assert.is_true(eventually(function() return isolate.stats().done > s.done end))
      local t = isolate.spawn(function() error("counted") end)
      t:wait()
      assert.is_true(eventually(function() return isolate.stats().failed > s.failed end))
    end)
  end)

  describe("memory_limit below what a fresh state needs", function()
    it("fails every task with kind memory; none stays queued", function()
      local pool <close> = isolate.pool{size = 1, memory_limit = 10000}
      for _ = 1, 20 do
        local task = pool:spawn(function() return 1 end)
        assert.is_true(task:wait(10), "a task stayed " .. task:status())
        local ok, err = task:result()
        assert.is_false(ok)
        assert.equal("memory", err.kind)
      end
    end)
  end)

  describe("memory_limit, when require fails for it", function()
    it("still gives kind memory", function()
      local pool <close> = isolate.pool{size = 1, memory_limit = 30000}
      local ok, err = pcall(pool.run, pool, function() return isolate.name() end)
      assert.is_false(ok)
      assert.equal("memory", err.kind)
      assert.equal(1, pool:run(function() return 1 end))
    end)
  end)

  describe("init that ends with isolate.exit", function()
    it("fails the task with kind exit, saying so", function()
      local pool <close> = isolate.pool{size = 1, init = function() require("isolate").exit(1) end}
      local ok, err = pcall(pool.run, pool, function() return 1 end)
      assert.is_false(ok)
      assert.equal("exit", err.kind)
      assert.equal("isolate.exit ended the pool's init", err.message)
    end)
  end)

  describe("close", function()
    it("stops an init that never ends, when nothing is queued", function()
      local pool = isolate.pool{size = 1, init = function() while true do end end}
      local t0 = poll.now()
      pool:close()
      assert.is_true(poll.now() - t0 < 5)
    end)

    it("waits for the pool's tasks", function()
      local pool = isolate.pool{size = 2}
      local tasks = {}
      for i = 1, 4 do tasks[i] = pool:spawn(function() spin(0.2) return i end) end
      pool:close()
      for i = 1, 4 do
        assert.equal("done", tasks[i]:status())
        assert.equal(i, tasks[i]:await())
      end
    end)

    it("refuses new work after it, and can be called again", function()
      local pool = isolate.pool{size = 1}
      assert.equal(1, pool:run(function() return 1 end))
      pool:close()
      assert.matches("closed", message_of(pool.run, pool, function() return 1 end))
      assert.matches("closed", message_of(pool.spawn, pool, function() return 1 end))
      assert.matches("closed", message_of(pool.map, pool, function(x) return x end, {1}))
      pool:close()
    end)

    it("is its __close: a pool in a to-be-closed variable", function()
      local task
      do
        local pool <close> = isolate.pool{size = 1}
        task = pool:spawn(function() spin(0.1) return "closed over" end)
      end
      assert.equal("done", task:status())
      assert.equal("closed over", task:await())
    end)

    it("joins its worker threads", function()
      isolate.run(function() return 1 end)	-- the default pool is up
      local before = threads()
      local pool = isolate.pool{size = 3}
      pool:map(function(x) return x end, {1, 2, 3, 4, 5, 6}, {chunk = 1})
      pool:close()
      assert.is_true(eventually(function() return threads() <= before end),
        "threads: " .. before .. " before the pool, " .. threads() .. " after its close")
    end)

    it("happens to a pool dropped unreferenced, with no crash or hang", function()
      local task
      do
        local pool = isolate.pool{size = 1}
        assert.equal(1, pool:run(function() return 1 end))
        pool:spawn(function() return "dropped" end)
        task = pool:spawn(function() spin(0.05) return "kept" end)
      end
      isolate.pool{size = 2}:spawn(function() return "both dropped" end)
      collectgarbage()
      collectgarbage()
      assert.equal("kept", task:await())
      assert.equal(1, isolate.run(function() return 1 end))
    end)
  end)

  describe("options", function()
    it("take a size of 1.0, as luaL_checkinteger would", function()
      local pool <close> = isolate.pool{size = 1.0}
      assert.equal(1, pool:stats().workers)
    end)

    it("are checked", function()
      for _, size in ipairs{0, -1, 1.5, "x"} do
        assert.matches("size", message_of(isolate.pool, {size = size}), 1, true)
      end
      assert.matches("memory_limit", message_of(isolate.pool, {memory_limit = -1}), 1, true)
      assert.matches("init", message_of(isolate.pool, {init = 3}), 1, true)
      assert.matches("name", message_of(isolate.pool, {name = {}}), 1, true)
      assert.has_error(function() isolate.pool(5) end, "bad argument #1 to 'pool' (table expected, got number)")
    end)
  end)
end)

describe("the default pool", function()
  it("is not deadlocked when every task of a full pool spawns and awaits one of its own", function()
    local tasks = {}
    for i = 1, isolate.cpus() * 2 do
      tasks[i] = isolate.spawn(function()
        return require("isolate").spawn(function() return i end):await()
      end)
    end
    for i = 1, #tasks do
      assert.is_true(tasks[i]:wait(10), "task " .. i .. " did not end within 10 s")
      assert.equal(i, tasks[i]:await())
    end
  end)

  it("drains 10,000 task handles dropped without an await", function()
    local n = os.getenv("ISOLATE_SPEC_UNDER_TOOL") and 1000 or 10000	-- (valgrind: 30 times slower)
    for i = 1, n do isolate.spawn(function() return i end) end
    collectgarbage()
    collectgarbage()
    assert.equal(1, isolate.run(function() return 1 end))
    assert.is_true(eventually(function() return isolate.stats().queued == 0 end, 10),
      "still queued: " .. isolate.stats().queued)
    assert.is_true(eventually(function() return isolate.stats().busy == 0 end, 10))
  end)
end)
