-- Long strings (ISOLATE_BORROW = 1 MiB and longer) are borrowed, not
-- copied: what run's arguments borrow stays on the caller's stack until
-- the job has read it, spawn's in the task until its results are taken,
-- and a task's results keep its isolate's state open until they are
-- decoded (or dropped), then the pool closes it.  These specs
-- check the bytes, and the lifetimes: the strings must live as long as a
-- message borrows them, and every state kept for them must be closed, its
-- finalizers run.  Scenarios that crash or involve the process (Ctrl-C,
-- fork, a script's end) run in subprocesses: spec/scenario/borrow.lua,
-- and spec/repro/borrow_*.lua, one minimal script per bug found and fixed.
local isolate = require "isolate"
local sub = dofile("spec/subprocess.lua")	-- (puts build/spec on package.cpath)
local posix = require "posix"
local poll = dofile("spec/poll.lua")
local marker, eventually = poll.marker, poll.eventually

local UNDER_TOOL = os.getenv("ISOLATE_SPEC_UNDER_TOOL") ~= nil
local BORROW = 1024 * 1024

-- n bytes, all 256 values in a pattern that does not repeat every 256
local function bytes(n, seed)
  local t = {}
  for i = 1, 251 do t[i] = string.char((i * (seed or 7) + i // 3) % 256) end
  local s = table.concat(t) .. "\0\0"
  return s:rep(n // #s + 1):sub(1, n)
end

-- Inside an isolate: a global object whose finalizer writes "closed" to
-- 'path', so that the file tells when the isolate's state was closed.
local function closes(path)
  KEEP = setmetatable({}, {__gc = function()
    local f = io.open(path, "w")
    f:write("closed")
    f:close()
  end})
end

local function closed(path, seconds)
  return eventually(function() return poll.read(path) == "closed" end, seconds or 5)
end

-- A pool of one worker, held busy until release() (for jobs that must
-- wait in the queue).
local function busypool()
  local go = marker()
  local pool = isolate.pool{size = 1}
  local busy = pool:spawn(function(path)
    while not io.open(path) do end
  end, go)
  assert(eventually(function() return busy:status() == "running" end), "the busy task did not start")
  local function release()
    poll.touch(go)
    busy:await()
    os.remove(go)
  end
  return pool, release
end

-- A hook called by run's wait (isolate's watch calls a hook that is set,
-- through a chunk named "=(isolate wait)"); 'fn' is called there.
local function onwait(fn)
  debug.sethook(function()
    local info = debug.getinfo(2, "S")
    if info and info.source == "=(isolate wait)" then fn() end
  end, "", 1)
end

-- Run a script of spec/repro/ (one per bug) in a subprocess: it prints
-- "ok" and exits with status 0 when the behavior is right.
local function repro(name, args, opts)
  local r = sub.run("spec/repro/" .. name .. ".lua", args or {}, opts or {timeout = 30})
  assert.equal("ok\n", r.stdout, r.report)
  assert.equal(0, r.code, r.report)
end

local function asan_fork() return sub.asan_fork(pending) end	-- (spec/subprocess.lua)


describe("borrowed long strings", function()
  describe("bytes", function()
    it("come through intact at 1 MiB - 1, 1 MiB, 1 MiB + 1 and 1 MiB, zeros included, both ways", function()
      for _, n in ipairs{BORROW - 1, BORROW, BORROW + 1, 1 << 20} do
        local s = bytes(n)
        local r, len, again = isolate.run(function(x) return x, #x, x .. "" end, s)
        assert.equal(n, len)
        assert.is_true(r == s, "run: wrong bytes at " .. n)
        assert.is_true(again == s)
        local t = isolate.spawn(function(x) return x end, s)
        assert.is_true(t:await() == s, "spawn: wrong bytes at " .. n)
      end
    end)

    it("come through as table keys and values, the same string many times", function()
      local s, k = bytes(1100000, 3), bytes(BORROW, 5)
      local t, same = isolate.run(function(s, k)
        local t = {[k] = s, s, k, nested = {[s] = k}}
        for i = 3, 1000 do t[i] = s end
        return t, s
      end, s, k)
      assert.equal(1000, #t)
      assert.is_true(t[k] == s and t[1] == s and t[2] == k and t[1000] == s)
      assert.is_true(t.nested[s] == k)
      assert.is_true(same == s)
    end)

    it("come through in the upvalues of a returned closure", function()
      local s = bytes(1100000)
      local f, g = isolate.run(function(x)
        local y = x .. "!"
        return function() return y end, function() return x, y end
      end, s)
      assert.is_true(f() == s .. "!")
      local a, b = g()
      assert.is_true(a == s and b == s .. "!")
    end)

    it("come through at 200 MB both ways", function()
      local n = UNDER_TOOL and 20 * 1024 * 1024 or 200 * 1024 * 1024
      local s = string.rep("\0ab", n // 3)
      local r, len = isolate.run(function(x) return x, #x end, s)
      assert.equal(#s, len)
      assert.is_true(r == s)
      r = nil
      local t = isolate.spawn(function(n) return string.rep("z\0", n // 2) end, n)
      assert.equal(n, #t:await())
      t = nil
      collectgarbage(); collectgarbage()
    end)

    it("come through copied, not borrowed, by map, exit and emit", function()
      local s = bytes(1100000)
      local out = isolate.map(function(x) return x .. "" end, {s, s, s})
      assert.is_true(out[1] == s and out[3] == s)
      assert.is_true(isolate.run(function(x) require("isolate").exit(x) end, s) == s)
      local t = isolate.spawn(function(x)
        local isolate = require "isolate"
        for _ = 1, 3 do isolate.emit(x) end
        return x
      end, s)
      for _ = 1, 3 do assert.is_true(t:receive() == s) end
      assert.is_true(t:await() == s)
    end)
  end)

  describe("in isolate.run's arguments", function()
    it("stay alive while the job waits in the queue, through collections", function()
      local pool, release = busypool()
      local t = {bytes(1 << 20)}
      onwait(function()
        debug.sethook()
        collectgarbage(); collectgarbage()
        release()
      end)
      local ok, r = pcall(pool.run, pool, function(t, s) return t[1] .. s end, t, bytes(BORROW, 9))
      debug.sethook()
      pool:close()
      assert.is_true(ok, tostring(r))
      assert.is_true(r == t[1] .. bytes(BORROW, 9))
    end)

    it("are read by pool:run's job that runs on the caller's thread", function()
      local pool = isolate.pool{size = 1}
      local s = bytes(300000)
      for _ = 1, 20 do assert.is_true(pool:run(function(x) return x end, s) == s) end
      pool:close()
    end)

    describe("when the wait is interrupted", function()
      it("by a hook's error while the job is queued: the job is cancelled, and the strings may go", function()
        local pool, release = busypool()
        for _ = 1, 5 do
          onwait(function()
            debug.sethook()
            error("interrupted by the hook")
          end)
          local ok, err = pcall(pool.run, pool, function(t) return #t[1] end, {bytes(1 << 20)})
          debug.sethook()
          assert.is_false(ok)
          assert.matches("interrupted by the hook", tostring(err), 1, true)
          collectgarbage(); collectgarbage()
          assert.equal(0, pool:stats().queued)	-- (cancelled in the queue)
        end
        release()
        assert.is_true(eventually(function() return pool:stats().busy == 0 end))
        assert.equal(5, pool:stats().cancelled)
        pool:close()
      end)

      it("by a hook's error while the job runs: the job is cancelled, and the strings may go", function()
        local pool = isolate.pool{size = 1}
        for _ = 1, 5 do
          local started = marker()
          onwait(function()		-- once the job runs
            debug.sethook()
            poll.await_file(started, 10)
            error("interrupted by the hook")
          end)
          local ok, err = pcall(pool.run, pool, function(s, path)
            io.open(path, "w"):close()
            while #s > 0 do end
          end, bytes(1 << 20), started)
          debug.sethook()
          assert.is_false(ok)
          assert.matches("interrupted by the hook", tostring(err), 1, true)
          assert.is_true(eventually(function() return pool:stats().busy == 0 end, 10),
            "the job was not cancelled")
          collectgarbage(); collectgarbage()
          os.remove(started)
        end
        assert.is_true(pool:run(function(s) return s end, bytes(BORROW)) == bytes(BORROW))
        pool:close()
      end)

      it("by the cancel of the isolate that waits: its task ends cancelled", function()
        for _ = 1, 3 do
          local started = marker()
          local t = isolate.spawn(function(path)
            local s = string.rep("z", 1 << 20)
            return require("isolate").run(function(x)
              io.open(path, "w"):close()
              while #x > 0 do end
            end, s)
          end, started)
          assert.is_true(poll.await_file(started, 10), "the nested isolate did not start")
          t:cancel()
          local ok, err = t:result()
          os.remove(started)
          assert.is_false(ok)
          assert.equal("cancelled", err.kind)
        end
        assert.is_true(eventually(function() return isolate.stats().busy == 0 end, 10))
      end)

      -- Start borrow.lua MODE, send SIGINT once the job has started.
      local function ctrlc(mode)
        local started = marker()
        local p = sub.start("spec/scenario/borrow.lua", {mode, started}, {timeout = 30})
        local pid = tonumber((sub.readline(p) or ""):match("^ready (%d+)$"))
        local begun = pid ~= nil and poll.await_file(started, 10)
        if begun then posix.kill(pid, "INT") end
        local r = sub.finish(p)
        os.remove(started)
        assert.is_true(begun, "the job did not start\n" .. r.report)
        return r
      end

      it("by Ctrl-C, run's job on the caller's thread: caught, nothing left busy, the pool works", function()
        local r = ctrlc("ctrlc-run")
        assert.equal(0, r.code, r.report)
        assert.matches("caught: [^\n]*interrupted!", r.stdout, 1, false)
        assert.matches("\nagain: ok\n", r.stdout, 1, true)
      end)

      it("by Ctrl-C, run's job on a worker: caught, the job cancelled, the pool works", function()
        local r = ctrlc("ctrlc-worker")
        assert.equal(0, r.code, r.report)
        assert.matches("caught: [^\n]*interrupted!", r.stdout, 1, false)
        assert.matches("\nbusy 0\n", r.stdout, 1, true)
        assert.matches("\nagain: ok\n", r.stdout, 1, true)
      end)

      -- the wait after the cancel lasts until the job has read its input, not its end
      it("by Ctrl-C while the job is blocked in C: raised at once, as without a long string", function()
        repro("borrow_interrupt_blocked")
      end)
    end)

    -- every string the message borrows is kept alive, not only the values on the stack
    it("reachable only through a table survive a hook that drops them during the wait", function()
      repro("borrow_dropped_container", {"args"})
    end)

    -- a constructor's arguments are kept alive with the message
    it("that an __isolate handler makes survive a collection before the decode", function()
      repro("borrow_isolate_fresh", {"args"})
    end)
  end)

  describe("in a task's results", function()
    it("await twice, result and wait, with collections in between", function()
      local s = bytes(150000)
      local t = isolate.spawn(function(x) return x, {x} end, s)
      assert.is_true(t:wait())
      collectgarbage(); collectgarbage()
      local a, b = t:await()
      assert.is_true(a == s and b[1] == s)
      collectgarbage(); collectgarbage()
      a, b = t:await()
      assert.is_true(a == s and b[1] == s)
      local ok, c = t:result()
      assert.is_true(ok and c == s)
      local t2 = isolate.spawn(function(x) return x end, s)
      local ok2, d = t2:result()
      assert.is_true(ok2 and d == s)
    end)

    it("through completions and completed", function()
      local s = bytes(1100000)
      local set, tasks = isolate.completions(), {}
      for i = 1, 20 do
        tasks[i] = isolate.spawn(function(x, i) return x .. i end, s, i)
        set:add(tasks[i])
      end
      local n = 0
      while #set > 0 do
        for _, t in ipairs(set:wait(10)) do
          n = n + 1
          assert.is_true(t:await():sub(1, 1100000) == s)
        end
      end
      assert.equal(20, n)
      set:close()
      local list = {}
      for i = 1, 10 do list[i] = isolate.spawn(function(x, i) return x .. i end, s, i) end
      n = 0
      for i, t in isolate.completed(list, 30) do
        n = n + 1
        assert.is_true(t:await() == s .. i)
      end
      assert.equal(10, n)
    end)

    it("through the luv adapter (run in coroutines, spawn's callback)", function()
      local r = sub.run("spec/scenario/borrow.lua", {"luv", ""}, {timeout = 30})
      assert.equal("luv: ok\n", r.stdout, r.report)
      assert.equal(0, r.code, r.report)
    end)

    it("through the cqueues adapter", function()
      local cqueues = require "cqueues"
      local iso = require "isolate.cqueues"
      local s = bytes(1100000)
      local cq, got = cqueues.new(), {}
      for i = 1, 5 do
        cq:wrap(function() got[i] = iso.run(function(x, i) return x .. i end, s, i) end)
      end
      assert(cq:loop(20))
      for i = 1, 5 do assert.is_true(got[i] == s .. i, "coroutine " .. i) end
    end)

    it("through isolates nested three deep", function()
      local r = isolate.run(function()
        local isolate = require "isolate"
        return isolate.run(function()
          local isolate = require "isolate"
          local t = isolate.spawn(function() return string.rep("n", 2200000) end)
          return t:await() .. isolate.run(function() return string.rep("m", 1100000) end), t:await()
        end)
      end)
      assert.is_true(r == string.rep("n", 2200000) .. string.rep("m", 1100000))
    end)

    it("from a pool with a memory limit, and past it a memory error", function()
      local pool = isolate.pool{size = 2, memory_limit = 8 * 1024 * 1024}
      for _ = 1, 20 do
        assert.equal(3 * 1024 * 1024, #pool:run(function() return string.rep("l", 3 * 1024 * 1024) end))
      end
      local ok, err = pcall(pool.run, pool, function() return string.rep("l", 9 * 1024 * 1024) end)
      assert.is_false(ok)
      assert.equal("memory", err.kind)
      pool:close()
    end)

    it("that cannot all travel: the failure is told, and the state closed", function()
      local path = marker()
      local ok, err = pcall(isolate.run, function(path)
        closes(path)
        return {string.rep("x", 1100000), coroutine.create(print)}
      end, path)
      assert.is_false(ok)
      assert.matches("cannot transfer a thread", tostring(err), 1, true)
      assert.is_true(closed(path), "the state was not closed")
      os.remove(path)
      path = marker()
      local t = isolate.spawn(function(path)
        closes(path)
        return string.rep("x", 1100000), coroutine.create(print)
      end, path)
      local ok2, err2 = t:result()
      assert.is_false(ok2)
      assert.matches("cannot transfer a thread", tostring(err2), 1, true)
      assert.is_true(closed(path), "the state was not closed")
      os.remove(path)
    end)

    -- a constructor's arguments are kept alive with the message
    it("that an __isolate handler makes survive a collection before the decode", function()
      repro("borrow_isolate_fresh", {"results"})
    end)

    -- a result table emptied while later results are encoded
    it("reachable only through a table survive an __isolate handler that drops them", function()
      repro("borrow_dropped_container", {"results"})
    end)

    describe("keep the isolate's state, which is closed (its finalizers run)", function()
      it("once await has decoded them", function()
        local path = marker()
        local t = isolate.spawn(function(path) closes(path); return string.rep("a", 1100000) end, path)
        assert.is_true(t:wait())
        assert.equal(1100000, #t:await())
        assert.is_true(closed(path), "the state was not closed")
        os.remove(path)
      end)

      it("once run has decoded them, on the default pool and a pool of its own", function()
        local path = marker()
        assert.equal(1100000, #isolate.run(function(path) closes(path); return string.rep("r", 1100000) end, path))
        assert.is_true(closed(path), "the state was not closed")
        os.remove(path)
        local pool = isolate.pool{size = 1}
        path = marker()
        assert.equal(1100000, #pool:run(function(path) closes(path); return string.rep("r", 1100000) end, path))
        assert.is_true(closed(path), "the state was not closed")
        os.remove(path)
        pool:close()
      end)

      it("when the task is collected with its output taken, not decoded", function()
        local path = marker()
        local t = isolate.spawn(function(path) closes(path); return string.rep("w", 1100000) end, path)
        assert.is_true(t:wait())
        t = nil
        collectgarbage(); collectgarbage()
        assert.is_true(closed(path), "the state was not closed")
        os.remove(path)
      end)

      it("when the task is collected after its end, never waited for", function()
        local path = marker()
        local t = isolate.spawn(function(path) closes(path); return string.rep("d", 1100000) end, path)
        assert.is_true(eventually(function() return t:done() end))
        t = nil
        collectgarbage(); collectgarbage()
        assert.is_true(closed(path), "the state was not closed")
        os.remove(path)
      end)

      -- an orphan's results go nowhere: its state is closed when it ends
      it("when the task, collected while it ran, ends", function()
        repro("borrow_orphan")
      end)

      it("when the pool is closed after the decode", function()
        local pool = isolate.pool{size = 2}
        local paths, tasks = {}, {}
        for i = 1, 4 do
          paths[i] = marker()
          tasks[i] = pool:spawn(function(path) closes(path); return string.rep("c", 1100000) end, paths[i])
        end
        for i = 1, 4 do assert.equal(1100000, #tasks[i]:await()) end
        pool:close()
        for i = 1, 4 do
          assert.is_true(closed(paths[i], 1), "state " .. i .. " was not closed by pool:close()")
          os.remove(paths[i])
        end
      end)

      -- after pool:close(), the reader closes them
      it("when the outputs are decoded after pool:close()", function()
        repro("borrow_pool_close")
      end)

      -- idle workers close them too, not the preparer alone
      it("while another kept state's finalizer runs for seconds", function()
        repro("borrow_slow_finalizer", {"close"})
      end)

      it("for 10,000 tasks awaited late: all of them, and memory stays bounded", function()
        local n = UNDER_TOOL and 1000 or 10000
        local log = os.tmpname()
        local function rss()
          local status = poll.read("/proc/self/status")
          return tonumber(status:match("\nVmRSS:%s*(%d+)"))
        end
        local function count()
          local f = io.open(log)
          local k = #f:read("a")
          f:close()
          return k
        end
        local peak, after
        for round = 1, 2 do
          local tasks = {}
          for i = 1, n do
            tasks[i] = isolate.spawn(function(path, i)
              KEEP = setmetatable({}, {__gc = function()
                local f = io.open(path, "a")
                f:write("x")
                f:close()
              end})
              return string.rep(string.char(65 + i % 26), 100 * 1024)
            end, log, i)
          end
          for i = 1, n do assert(tasks[i]:wait()) end
          peak = peak or rss()
          for i = 1, n do
            local s = tasks[i]:await()
            assert(#s == 100 * 1024 and s:byte(-1) == 65 + i % 26, "wrong bytes")
          end
          tasks = nil
          collectgarbage(); collectgarbage()
          assert.is_true(eventually(function() return count() == round * n end, 60),
            string.format("round %d: %d of %d states closed", round, count() - (round - 1) * n, n))
          after = rss()
        end
        os.remove(log)
        if not UNDER_TOOL then	-- (a second round reuses what the first freed)
          assert.is_true(after < 2 * peak, string.format("resident %d KiB after, %d KiB at the first peak", after, peak))
        end
      end)
    end)

    describe("at the script's end", function()
      it("with an output of a pool of its own not decoded: the isolate's finalizers run", function()
        local path = marker()
        local r = sub.run("spec/scenario/borrow.lua", {"end-pool", path}, {timeout = 20})
        local text = poll.read(path)
        os.remove(path)
        assert.equal("end of script\n", r.stdout, r.report)
        assert.equal(0, r.code, r.report)
        assert.equal("closed", text, "the isolate's finalizer did not run\n" .. r.report)
      end)

      -- at lua_close, the caller closes what is left before the process ends
      it("with an output of the default pool not decoded: the isolate's finalizers run", function()
        repro("borrow_script_end")
      end)
    end)

    describe("across a fork", function()
      it("are awaited in the child, taken before the fork, intact", function()
        if asan_fork() then return end
        local r = sub.run("spec/scenario/borrow.lua", {"fork-bytes", ""}, {timeout = 20})
        assert.matches("child: ok\n", r.stdout, 1, true)
        assert.matches("parent: ok\n", r.stdout, 1, true)
        assert.equal(0, r.code, r.report)
      end)

      -- the child leaves its copy of the parent's state alone
      it("run the isolate's finalizers in the parent only, output taken before the fork", function()
        if asan_fork() then return end
        repro("borrow_fork_finalizer", {"wait"})
      end)

      it("run the isolate's finalizers in the parent only, output still in the job", function()
        if asan_fork() then return end
        repro("borrow_fork_finalizer", {"done"})
      end)

      -- the fork handler does not wait while a state is closed
      it("do not make fork() wait for a kept state's finalizer", function()
        if asan_fork() then return end
        repro("borrow_slow_finalizer", {"fork"})
      end)
    end)
  end)
end)


-- A task's result whose array part holds ISOLATE_LEND numbers and booleans
-- or more is lent: the caller copies its slots from the isolate's table,
-- whose state stays until then (src/codec.c, T_LENT).
describe("lent arrays of numbers", function()
  local LEND = 65536
  local arrays = dofile("spec/scenario/arraycases.lua")
  local inplace = require("isolate.core")._inplace

  local function numbers(n)
    local t = {}
    for i = 1, n do
      t[i] = i % 7 == 0 and i * 0.5 or i % 11 == 0 and (i % 2 == 0) or i * 7919 - 2^40 // 1
    end
    t[1], t[2], t[3], t[4] = 0 / 0, -0.0, 1 / 0, math.mininteger
    t[5], t[6] = math.maxinteger, 3.0
    return t
  end

  it("come through with every value as it was", function()
    for _, n in ipairs {LEND - 1, LEND, LEND + 1, 300000} do
      local back = isolate.run(function(k, make) return make(k) end, n, numbers)
      assert(arrays.same(numbers(n), back))
    end
  end)

  it("come through with their other keys, shared, nested and as several results", function()
    local a, b, c = isolate.run(function(make)
      local t = make(LEND + 5)
      t.name, t[LEND + 100], t[true] = "lent", "far", false
      local list = make(LEND)
      list[LEND + 2] = 7			-- past a nil: a pair
      return {t = t, again = t, list = list}, t, make(LEND)
    end, numbers)
    assert.equal(a.t, a.again)
    assert.equal(a.t, b)
    local want = numbers(LEND + 5)
    want.name, want[LEND + 100], want[true] = "lent", "far", false
    assert(arrays.same(want, b))
    local list = numbers(LEND)
    list[LEND + 2] = 7
    assert(arrays.same(list, a.list))
    assert(arrays.same(numbers(LEND), c))
  end)

  it("come through copied when they hold anything else, or have a metatable", function()
    local strings, meta = isolate.run(function(make)
      local t, m = make(LEND * 2), make(LEND)
      t[LEND + 3] = "text"
      return t, setmetatable(m, {__index = function() return "mt" end})
    end, numbers)
    local want = numbers(LEND * 2)
    want[LEND + 3] = "text"
    assert(arrays.same(want, strings))
    assert.equal("mt", meta.nothere)
  end)

  it("keep the isolate's state until the caller has copied them", function()
    if not inplace then return end
    local function task(n)
      local path = marker()
      return isolate.spawn(function(path, k)
        KEEP = setmetatable({}, {__gc = function() io.open(path, "w"):close() end})
        local t = {}
        for i = 1, k do t[i] = i end
        return t
      end, path, n), path
    end
    local lent, lentpath = task(LEND)
    local copied, copiedpath = task(LEND - 1)
    assert.is_true(lent:wait() and copied:wait())
    assert.is_true(eventually(function() return poll.read(copiedpath) ~= nil end, 5),
      "a copied result's state was not closed")
    assert.is_nil(poll.read(lentpath), "a lent result's state was closed before its decode")
    collectgarbage(); collectgarbage()
    assert.equal(LEND, #lent:await())
    assert.equal(LEND, #lent:await())		-- (the second await replays the first)
    assert.is_true(eventually(function() return poll.read(lentpath) ~= nil end, 5),
      "a lent result's state was not closed after its decode")
    os.remove(lentpath)
    os.remove(copiedpath)
  end)

  it("from tasks awaited in any order, and from isolates nested in isolates", function()
    local tasks = {}
    for i = 1, 6 do
      tasks[i] = isolate.spawn(function(k, n) local t = {} for j = 1, n do t[j] = j * k end return t end, i, LEND)
    end
    for i = 6, 1, -1 do
      local t = tasks[i]:await()
      assert.equal(LEND, #t)
      assert.equal(LEND * i, t[LEND])
    end
    local t = isolate.run(function(n)
      local isolate = require "isolate"
      local inner = isolate.run(function(k) local t = {} for j = 1, k do t[j] = j + 0.5 end return t end, n)
      inner[1] = -1
      return inner
    end, LEND)
    assert.equal(-1, t[1])
    assert.equal(LEND + 0.5, t[LEND])
  end)

  describe("changed by an __isolate of a later result while the results are sent", function()
    local function after(change)
      return isolate.run(function(k, how)
        local t = {}
        for i = 1, k do t[i] = i end
        return t, setmetatable({}, {__isolate = function()
          how(t)
          return function() return "made" end
        end})
      end, LEND, change)
    end

    it("a number or a nil put there comes through as it is when the caller copies it", function()
      local t, made = after(function(t) t[10], t[11] = 0.25, nil end)
      assert.equal(inplace and 0.25 or 10, t[10])	-- (copied at once through the C API)
      if inplace then assert.is_nil(t[11]) else assert.equal(11, t[11]) end
      assert.equal("made", made)
    end)

    it("anything else there, or the table shrunk: an error, not a copy", function()
      if not inplace then return end
      assert.error_matches(function() after(function(t) t[10] = "text" end) end,
        "a lent table changed before it was decoded")
      assert.error_matches(function() after(function(t)
        for i = 1, #t do t[i] = nil end
        for i = 1, 100 do t["k" .. i] = i end
      end) end, "a lent table changed before it was decoded")
    end)
  end)

  -- (an __isolate that finds, with the debug library, the tables on the
  -- stack of the C function that encodes: what the message borrows, and
  -- the table that holds the value, and drops the value from them)
  local function dropping(value, refill)
    return setmetatable({}, {__isolate = function()
      local i = 1
      while true do
        local name, v = debug.getlocal(2, i)
        if not name then break end
        if type(v) == "table" then
          for k, x in pairs(v) do
            if rawequal(x, value) then v[k] = nil end
            if type(x) == "table" and rawequal(x[1], value) then x[1] = nil end
          end
        end
        i = i + 1
      end
      value = nil
      collectgarbage(); collectgarbage()
      if refill then KEEP = refill() end	-- (memory freed would be taken again)
      return function() return "made" end
    end})
  end

  it("dropped and collected by an __isolate before the caller copies them: an error, not a read", function()
    local refill = function() local u = {} for i = 1, LEND do u[i] = 99 end return u end
    local ok, r = pcall(isolate.run, function(n, dropping, refill)
      local t = {}
      for i = 1, n do t[i] = i end
      return {t}, dropping(t, refill)
    end, LEND, dropping, refill)
    if inplace then
      assert.is_false(ok)
      assert.matches("a value that the message borrows was dropped while it was encoded %(by an __isolate%)",
        tostring(r))
    else
      assert.is_true(ok, tostring(r))		-- (copied at once: nothing to drop)
      assert.equal(LEND, r[1][LEND])
    end
  end)

  it("and the same for a borrowed string, in the results and in run's arguments", function()
    local pattern = "a value that the message borrows was dropped while it was encoded"
    assert.error_matches(function()
      isolate.run(function(n, dropping)
        local s = ("x"):rep(n)
        return {s}, dropping(s, function() return ("y"):rep(n) end)
      end, 2 * BORROW, dropping)
    end, pattern)
    local ok, err = pcall(isolate.run, function(a) return #a[1] end,
      {("x"):rep(2 * BORROW)}, dropping(("x"):rep(2 * BORROW)))
    assert.is_false(ok)
    assert.matches(pattern, tostring(err))
    assert.equal(2 * BORROW, isolate.run(function(a) return #a end, ("x"):rep(2 * BORROW)))	-- (it goes on)
  end)

  it("leave the memory that an __isolate makes and drops to its collector, under a memory limit", function()
    local pool = isolate.pool{size = 1, memory_limit = 8 * 1024 * 1024}
    local t, made = pool:run(function(n)
      local t = {}
      for i = 1, n do t[i] = i end
      return t, setmetatable({}, {__isolate = function()
        for _ = 1, 200 do		-- 32 MB made and dropped, 8 MB allowed
          local u = {}
          for j = 1, 10000 do u[j] = j end
          u = nil
          collectgarbage()
        end
        return function() return "made" end
      end})
    end, LEND)
    assert.equal("made", made)
    assert.equal(LEND, #t)
    pool:close()
  end)

  it("are refused by isolate.decode, which never reads an address", function()
    local msg = "\27ISO\3\1" .. ("\0"):rep(8) .. "\21" .. string.pack("<I4I4I8", 4, 0, 4096)
    assert.error_matches(function() isolate.decode(msg) end, "unknown tag")
    assert.error_matches(function() isolate.decode(msg, {trusted = true}) end, "unknown tag")
  end)
end)
