local isolate = require "isolate"
local poll = dofile("spec/poll.lua")
local now, eventually, touch, marker, await_file, spin =
  poll.now, poll.eventually, poll.touch, poll.marker, poll.await_file, poll.spin

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

-- the error that f(...) raises (it must raise)
local function error_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "no error")
  return err
end

describe("isolate.map", function()
  it("returns a new list of fn(item), in order", function()
    local list = range(10000)
    local squares = isolate.map(function(x) return x * x end, list)
    assert.are_not.equal(list, squares)
    assert.equal(10000, #squares)
    for i = 1, 10000 do assert.equal(i * i, squares[i]) end
    assert.equal(10000, list[10000])	-- the list is left as it was
  end)

  it("keeps the first result of each call only", function()
    assert.same({2, 4, 6}, isolate.map(function(x) return 2 * x, "extra" end, {1, 2, 3}))
  end)

  it("gives an empty list for an empty list", function()
    assert.same({}, isolate.map(function(x) return x end, {}))
  end)

  it("takes items of any type that travels: tables, strings", function()
    assert.same({"ab", "c"}, isolate.map(function(t) return t.a .. t.b end, {{a = "a", b = "b"}, {a = "c", b = ""}}))
    assert.same({3, 0, 5}, isolate.map(function(s) return #s end, {"abc", "", "hello"}))
    assert.same({{1, "x"}, {2, "y"}}, isolate.map(function(t) return {t[2], t[1]} end, {{"x", 1}, {"y", 2}}))
  end)

  it("carries fn's upvalues by value", function()
    local cfg = {factor = 3}
    assert.same({3, 6, 9}, isolate.map(function(x) cfg.touched = true return x * cfg.factor end, {1, 2, 3}))
    assert.is_nil(cfg.touched)
  end)

  describe("opts.chunk", function()
    it("gives the same results for any chunk size", function()
      local list = range(500)
      local expected = isolate.map(function(x) return x * 3 + 1 end, list)
      for _, chunk in ipairs{1, 7, 100000} do
        assert.same(expected, isolate.map(function(x) return x * 3 + 1 end, list, {chunk = chunk}))
      end
    end)

    it("runs the items of one chunk one after another in one fresh state", function()
      -- a global of the chunk's state counts its calls
      local function count() calls = (calls or 0) + 1 return calls end
      assert.same({1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2}, isolate.map(count, range(12), {chunk = 5}))
      assert.same({1, 1, 1, 1}, isolate.map(count, range(4), {chunk = 1}))
    end)

    it("must be a positive integer", function()
      for _, chunk in ipairs{0, -1, 1.5, "x", true} do
        local err = error_of(isolate.map, function(x) return x end, {1, 2}, {chunk = chunk})
        assert.equal("string", type(err))
        assert.matches("bad argument #3 to 'map'", err, 1, true)
        assert.matches("chunk", err, 1, true)
      end
    end)
  end)

  it("checks its arguments", function()
    assert.matches("bad argument #1 to 'map' %(function expected, got nil%)", error_of(isolate.map, nil, {1}))
    assert.matches("bad argument #2 to 'map' %(table expected, got number%)",
      error_of(isolate.map, function(x) return x end, 5))
  end)

  describe("when a call raises", function()
    it("raises its RemoteError, with the item's index", function()
      for _, opts in ipairs{{}, {chunk = 1}, {chunk = 10}} do
        local err = error_of(isolate.map, function(x)
          if x == 37 then error("bad " .. x) end
          return x
        end, range(100), opts)
        assert.equal(isolate.RemoteError, getmetatable(err))
        assert.equal("error", err.kind)
        assert.equal(37, err.index)
        assert.matches("bad 37$", err.message)
      end
    end)

    it("reports the lowest failing index, not the first to fail", function()
      local function fails(x)
        if x == 13 then spin(0.2) error("bad 13") end	-- fails after the others
        if x >= 40 then error("bad " .. x) end
        return x
      end
      for _, opts in ipairs{{chunk = 1}, {}} do
        local err = error_of(isolate.map, fails, range(100), opts)
        assert.equal(isolate.RemoteError, getmetatable(err))
        assert.equal(13, err.index)
        assert.matches("bad 13$", err.message)
      end
    end)

    it("cancels the rest at once", function()
      local release = marker()
      local t0 = now()
      local err = error_of(isolate.map, function(x)
        if x == 1 then error("first") end
        await_file(release, 10)	-- as long as nothing cancels it
        return x
      end, range(20), {chunk = 1})
      local took = now() - t0
      local stopped = eventually(function() return isolate.stats().busy == 0 end, 5)
      touch(release)	-- whatever happened, nothing is left running
      assert.equal(1, err.index)
      assert.matches("first$", err.message)
      assert.is_true(took < 5, string.format("map raised after %.1f s", took))
      assert.is_true(stopped, "the rest still run 5 s after map raised")
      os.remove(release)
    end)
  end)

  describe("when a result cannot travel", function()
    it("raises a RemoteError with that item's index", function()
      local ok, err = pcall(isolate.map, function(x) if x == 3 then return io.tmpfile() end return x end,
        {1, 2, 3, 4})
      assert.is_false(ok)
      assert.equal(isolate.RemoteError, getmetatable(err))
      assert.equal(3, err.index)
      assert.matches("cannot transfer a userdata (FILE*) (result of item #3)", err.message, 1, true)
    end)
  end)

  describe("at scale", function()
    -- linear time: twice the items, about twice the time (a quadratic
    -- wait took 20 s for 20,000 chunks)
    it("runs 20,000 chunks of one item in a few seconds", function()
      local n = os.getenv("ISOLATE_SPEC_UNDER_TOOL") and 2000 or 20000
      local list = {}
      for i = 1, n do list[i] = i end
      local t0 = poll.now()
      local out = isolate.map(function(x) return x * 2 end, list, {chunk = 1})
      assert.equal(2 * n, out[n])
      assert.is_true(poll.now() - t0 < 10, string.format("took %.1f s", poll.now() - t0))
    end)
  end)

  describe("opts.progress", function()
    it("is called in the caller with (done, total), done never going back, last with (total, total)", function()
      local calls = {}
      local results = isolate.map(function(x) return -x end, range(200), {
        chunk = 10,
        progress = function(done, total) calls[#calls + 1] = {done, total} end,
      })
      assert.same(isolate.map(function(x) return -x end, range(200)), results)
      assert.is_true(#calls >= 1, "progress was never called")
      local last = 0
      for _, c in ipairs(calls) do
        local done, total = c[1], c[2]
        assert.equal(200, total)
        assert.is_true(done >= last and done <= total, "done went " .. last .. " -> " .. done)
        last = done
      end
      assert.same({200, 200}, calls[#calls])
    end)

    it("true (a bar on stderr, drawn when it is a terminal) changes no result", function()
      assert.same({1, 4, 9}, isolate.map(function(x) return x * x end, {1, 2, 3}, {progress = true}))
    end)
  end)

  it("works inside an isolate", function()
    assert.same({2, 3, 4}, isolate.run(function()
      local iso = require "isolate"
      return iso.map(function(x) return x + 1 end, {1, 2, 3})
    end))
  end)

  it("of a function that spawns and awaits tasks completes: nested waits do not deadlock", function()
    local expected = {}
    for i = 1, 20 do expected[i] = i + 1 end
    for _, opts in ipairs{{}, {chunk = 1}} do
      assert.same(expected, isolate.map(function(x)
        local iso = require "isolate"
        return iso.run(function() return x + 1 end)
      end, range(20), opts))
    end
  end)
end)

describe("isolate.all", function()
  it("returns the first result of each task, in list order", function()
    local tasks = {
      isolate.spawn(function() spin(0.1) return 1, "extra" end),
      isolate.spawn(function() return "two" end),
      isolate.spawn(function() return {3} end),
    }
    assert.same({1, "two", {3}}, isolate.all(tasks))
  end)

  it("raises the error of the first failing task in list order", function()
    local tasks = {
      isolate.spawn(function() return 1 end),
      isolate.spawn(function() spin(0.1) error("second") end),	-- fails last
      isolate.spawn(function() error("third") end),
    }
    local err = error_of(isolate.all, tasks)
    assert.equal(isolate.RemoteError, getmetatable(err))
    assert.matches("second$", err.message)
  end)

  it("gives an empty list for no tasks", function()
    assert.same({}, isolate.all({}))
  end)
end)

describe("isolate.completed", function()
  -- every (i, task) that the loop yields, in order
  local function collect(tasks, timeout)
    local seen = {}
    for i, task in isolate.completed(tasks, timeout) do seen[#seen + 1] = {i, task} end
    return seen
  end

  it("yields each task as it ends, in the order they end", function()
    local release = marker()
    -- spawned second, but first in the list: it ends only after the loop
    -- has yielded the other one (one worker would run the other first)
    local second = isolate.spawn(function() return 2 end)
    local first = isolate.spawn(function() return await_file(release, 10) end)
    local tasks = {first, second}
    local order = {}
    for i, task in isolate.completed(tasks) do
      order[#order + 1] = i
      assert.equal(tasks[i], task)
      assert.is_true(task:done())
      touch(release)
    end
    os.remove(release)
    assert.same({2, 1}, order)
    assert.is_true(first:await())
    assert.equal(2, second:await())
  end)

  it("yields every task once: ended before the call, failed, or later", function()
    local early = isolate.spawn(function() return "early" end)
    assert.is_true(early:wait(5))
    local tasks = {
      early,
      isolate.spawn(function() error("failed") end),
      isolate.spawn(function() spin(0.05) return "late" end),
      isolate.spawn(function() return "any" end),
    }
    local seen = collect(tasks)	-- never raises for a failed task
    assert.equal(4, #seen)
    local count = {}
    for _, s in ipairs(seen) do
      local i, task = s[1], s[2]
      count[i] = (count[i] or 0) + 1
      assert.equal(tasks[i], task)
    end
    assert.same({1, 1, 1, 1}, count)
    assert.equal("failed", tasks[2]:status())
    local ok, err = pcall(tasks[2].await, tasks[2])
    assert.is_false(ok)
    assert.matches("failed$", err.message)
    assert.equal("late", tasks[3]:await())
  end)

  it("yields nothing for no tasks", function()
    assert.same({}, collect({}))
  end)

  it("with a timeout, raises an isolate.TimeoutError after the tasks that ended", function()
    local release = marker()
    local quick = isolate.spawn(function() return 1 end)
    local stuck = isolate.spawn(function() return await_file(release, 10) end)
    assert.is_true(quick:wait(5))
    local seen = {}
    local t0 = now()
    local ok, err = pcall(function()
      for i in isolate.completed({quick, stuck}, 0.2) do seen[#seen + 1] = i end
    end)
    local took = now() - t0
    touch(release)
    stuck:cancel()
    assert.is_true(stuck:wait(5))
    os.remove(release)
    assert.is_false(ok)
    assert.equal(isolate.TimeoutError, getmetatable(err))
    assert.same({1}, seen)
    assert.is_true(took >= 0.2 and took < 5, string.format("raised after %.2f s", took))
  end)

  it("goes through 10,000 ended tasks in well under a second each step", function()
    local n = os.getenv("ISOLATE_SPEC_UNDER_TOOL") and 1000 or 10000
    local tasks = {}
    for i = 1, n do tasks[i] = isolate.spawn(function(x) return x end, i) end
    for i = 1, n do tasks[i]:wait() end
    local t0, seen = poll.now(), 0
    for _ in isolate.completed(tasks) do seen = seen + 1 end
    assert.equal(n, seen)
    assert.is_true(poll.now() - t0 < 5, string.format("took %.1f s", poll.now() - t0))
  end)
end)

describe("isolate.core.chunk", function()
  it("takes only a message of encodefn, never an encoder's own buffer (reached with the debug library)", function()
    local core = require "isolate.core"
    local err
    local obj = setmetatable({}, {__isolate = function()
      for i = 1, 20 do
        local name, v = debug.getlocal(2, i)		-- isolate.encode's C frame
        if not name then break end
        if type(v) == "userdata" then
          local ok, e = pcall(core.chunk, nil, v, {1}, 1, 1, {})
          err = err or (not ok and e)
          assert(not ok, "chunk took an encoder's buffer")
        end
      end
      return function() return "made" end
    end})
    isolate.encode({[1.5] = obj})
    assert.matches("isolate.FunctionMessage expected", err)
    local tasks = {}
    local T = {setmetatable({}, {__isolate = function()	-- encodefn's own, unfinished
      for level = 2, 3 do
        for i = 1, 20 do
          local name, v = debug.getlocal(level, i)
          if name and type(v) == "userdata" then
            assert(not pcall(core.chunk, nil, v, {1}, 1, 1, {}), "chunk took an unfinished message")
          end
        end
      end
      return function() return "made" end
    end})}
    core.encodefn(function() return #T end)
    core.chunk(nil, core.encodefn(function(x) return x * 2 end), {21}, 1, 1, tasks)
    local out = {}
    core.into(tasks[1], out, 1)
    assert.same({42}, out)
  end)
end)
