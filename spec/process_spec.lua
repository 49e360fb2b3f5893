-- The process around the isolates: fork, Ctrl-C, a script's end, and
-- isolates that could take their process down.  Each scenario runs in a
-- subprocess of its own under timeout(1) (spec/subprocess.lua), so that a
-- hang or a crash is a failed spec, not a hung run; the scenarios are the
-- scripts in spec/scenario/.
local isolate = require "isolate"
local sub = dofile("spec/subprocess.lua")
local posix = require "posix"

-- the line of 'out' that starts with 'check: '
local function verdict(out, check)
  for line in out:gmatch("[^\n]+") do
    if line:sub(1, #check + 2) == check .. ": " then return line:sub(#check + 3) end
  end
  return "no report"
end

local function asan_fork() return sub.asan_fork(pending) end	-- (spec/subprocess.lua)

describe("a forked process", function()
  -- one subprocess for all the fork checks, started by the first that needs it
  local result
  local function fork_scenario()
    result = result or sub.run("spec/scenario/fork.lua", {}, {timeout = 20})
    return result
  end

  local function check(name)
    if asan_fork() then return end
    local r = fork_scenario()
    assert.equal("ok", verdict(r.stdout, name), r.report)
  end

  it("has the task running at the fork", function()
    check("running at the fork")
  end)

  it("gets a working pool for isolate.run on first use in the child", function()
    check("child run ended")
  end)

  it("gets a working pool for spawn and await in the child", function()
    check("child spawn ended")
  end)

  it("fails at once in the child to await a task that was running at the fork", function()
    check("child await ended")
  end)

  it("from inside an isolate ends when the isolate's function returns in the child", function()
    check("child of an isolate ended")
  end)

  it("still gets that task's real result in the parent", function()
    if asan_fork() then return end
    check("parent's task")
    check("parent runs")
    assert.equal(0, fork_scenario().code, fork_scenario().report)
  end)
end)

describe("a process forked while a worker waits for task ends (isolate.completed)", function()
  it("waits for ends of its own in the child: no waiter of the parent is left there", function()
    if asan_fork() then return end
    local r = sub.run("spec/scenario/forkwaits.lua", {}, {timeout = 30})
    assert.equal(0, r.code, r.report)
    assert.equal("child: true nil\nparent: child exited 0\nparent: waited\n", r.stdout)
  end)
end)

describe("a process forked with a pool of its own", function()
  local function verdicts(mode)
    local r = sub.run("spec/scenario/poolfork.lua", {mode}, {timeout = 30})
    return r
  end

  it("ends a child forked inside the pool's isolate when the isolate's function ends", function()
    if asan_fork() then return end
    local r = verdicts("spawn")
    assert.equal("ok", verdict(r.stdout, "child"), r.report)
  end)

  it("ends such a child also when pool:run ran the isolate in the script's thread", function()
    if asan_fork() then return end
    local r = verdicts("run")
    assert.equal("ok", verdict(r.stdout, "child"), r.report)
  end)

  it("fails at once in the child a task of the pool that ran at the fork", function()
    if asan_fork() then return end
    local r = verdicts("task")
    assert.equal("ok", verdict(r.stdout, "child"), r.report)
    assert.equal("ok", verdict(r.stdout, "parent"), r.report)
  end)
end)

describe("Ctrl-C", function()
  -- Start interrupt.lua MODE, send SIGINT half a second after it is ready,
  -- and return the subprocess' record with 'after', the seconds from the
  -- signal to its end.
  local function interrupt(mode, delay, timeout)
    local p = sub.start("spec/scenario/interrupt.lua", {mode}, {timeout = timeout or 6})
    local pid = tonumber((sub.readline(p) or ""):match("^ready (%d+)$"))
    local sent, killed, why
    if pid then
      os.execute("sleep " .. (delay or 0.5))	-- well into the wait
      sent = posix.monotonic()
      killed, why = posix.kill(pid, "INT")
    end
    local r = sub.finish(p)		-- whatever happened, so that nothing is left behind
    assert.is_not_nil(pid, "no \"ready PID\" line\n" .. r.report)
    assert.is_true(killed, tostring(why) .. "\n" .. r.report)
    r.after = posix.monotonic() - sent
    return r
  end

  local function check(r, within)
    within = within or 2
    assert.is_nil(r.stdout:match("returned"), r.report)
    assert.equal(1, r.code, r.report)
    assert.matches("interrupted!", r.stderr, 1, true)
    assert.is_true(r.after < within, string.format("ended %.1f s after the signal", r.after))
  end

  it("interrupts isolate.run of an endless isolate, within 2 s", function()
    check(interrupt("run"))
  end)

  it("interrupts task:await of an endless task, within 2 s", function()
    check(interrupt("await"))
  end)

  it("interrupts isolate.run when it comes while run still encodes its arguments", function()
    -- the hook is set before the wait begins; the wait must still run it
    -- (within the time left to encode, which sanitizers stretch)
    check(interrupt("encode", 0.1, 60), 30)
  end)

  it("is never delivered to a worker thread: they block SIGINT (run may run its isolate in the caller's thread)", function()
    -- SigBlk is a hexadecimal mask in which signal n is bit n - 1
    local function sigint_blocked(path)
      for line in io.lines(path) do
        local mask = line:match("^SigBlk:%s*(%x+)")
        if mask then return tonumber(mask:sub(-1), 16) & 2 ~= 0 end
      end
      error("no SigBlk in " .. path)
    end
    local worker = isolate.spawn(function(f) return f("/proc/thread-self/status") end, sigint_blocked):await()
    assert.is_true(worker, "SIGINT is not blocked in the isolate's thread")
    assert.is_false(sigint_blocked("/proc/thread-self/status"), "SIGINT is blocked in the caller's thread")
  end)
end)

describe("a script's end", function()
  it("with tasks running and queued, neither hangs nor crashes", function()
    local r = sub.run("spec/scenario/lifecycle.lua", {}, {timeout = 10})
    assert.equal("end of script\n", r.stdout, r.report)
    assert.equal(0, r.code, r.report)
    assert.is_true(r.seconds < 5, string.format("took %.1f s to exit", r.seconds))
  end)
end)

describe("an isolate that could take its process down", function()
  -- crash.lua CASE, in a subprocess: "ok" and status 0, or what went wrong
  local function survives(case, opts)
    local r = sub.run("spec/scenario/crash.lua", {case}, opts or {timeout = 10})
    assert.equal("ok\n", r.stdout, r.report)
    assert.equal(0, r.code, r.report)
  end

  it("calls os.exit: only the isolate ends", function()
    survives("exit")
  end)

  it("overflows Lua's stack: a RemoteError", function()
    survives("stack")
  end)

  it("nests C calls to Lua's limit: a RemoteError, no overflow of the thread's stack", function()
    survives("cstack")
  end)

  it("raises an error object whose __tostring raises: a RemoteError", function()
    survives("tostring")
  end)

  it("raises in a finalizer: a warning, the results still come back", function()
    survives("gc")
  end)

  it("runs out of memory: a RemoteError of kind memory", function()
    if sub.sanitized() then
      -- a sanitizer's runtime reserves terabytes of address space
      pending("needs a limit on address space, which a sanitizer cannot run under")
      return
    end
    survives("memory", {timeout = 10, ulimit_v = 1024 * 1024})
  end)
end)
