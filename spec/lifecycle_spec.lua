-- Tasks and their caller's life: the end of a script, errors nobody saw,
-- Ctrl-C while map or run waits.  Each case runs spec/scenario/lifecycle6.lua
-- in a subprocess of its own (spec/subprocess.lua), so that a hang or a
-- crash is a failed spec, not a hung run.
local sub = dofile("spec/subprocess.lua")
local posix = require "posix"
local poll = dofile("spec/poll.lua")

local SCENARIO = "spec/scenario/lifecycle6.lua"

-- Run the scenario in MODE with warnings on (lua5.4 -W) or off.  The spec
-- host of the TSan run takes no options: the script then turns them on
-- itself, as -W does.
local function scenario(mode, warnings)
  local args, flags = {mode, poll.marker()}, {}
  if warnings then
    if host_failalloc ~= nil then args[3] = "W" else flags[1] = "-W" end
  end
  local r = sub.run(SCENARIO, args, {timeout = 10, flags = flags})
  os.remove(args[2])
  return r
end

describe("a script's end", function()
  it("with every worker in an endless loop and a task queued, exits at once, status 0", function()
    local queued = poll.marker()
    local r = sub.run(SCENARIO, {"end", queued}, {timeout = 10})
    local ran = poll.exists(queued)
    os.remove(queued)
    assert.equal("end of script\n", r.stdout, r.report)
    assert.equal(0, r.code, r.report)
    assert.is_true(r.seconds < 5, string.format("took %.1f s to exit", r.seconds))
    assert.is_false(ran, "the queued task ran after the script's end")
  end)
end)

describe("a script's end with a pool", function()
  it("cancels the pool's running task: its to-be-closed variables close", function()
    local closed = poll.marker()
    local r = sub.run(SCENARIO, {"pool-end", closed}, {timeout = 20})
    local text = poll.read(closed)
    os.remove(closed)
    assert.equal("end of script\n", r.stdout, r.report)
    assert.equal(0, r.code, r.report)
    assert.equal("closed", text, "the task's __close did not run\n" .. r.report)
  end)
end)

describe("an error nobody saw", function()
  it("is a Lua warning, under lua5.4 -W, when its failed task is collected", function()
    local r = scenario("lost", true)
    assert.equal("collected\n", r.stdout, r.report)
    assert.equal(0, r.code, r.report)
    assert.matches("Lua warning: ", r.stderr, 1, true)
    assert.matches("lost", r.stderr, 1, true)
  end)

  it("is silent without -W", function()
    local r = scenario("lost", false)
    assert.equal("collected\n", r.stdout, r.report)
    assert.equal(0, r.code, r.report)
    assert.equal("", r.stderr, r.report)
  end)

  it("gives no warning for map's own tasks: map raised the error", function()
    local r = scenario("map-failed", true)
    assert.equal("collected\n", r.stdout, r.report)
    assert.equal(0, r.code, r.report)
    assert.equal("", r.stderr, r.report)
  end)

  it("gives no warning once await has raised it", function()
    local r = scenario("seen", true)
    assert.equal("collected\n", r.stdout, r.report)
    assert.equal(0, r.code, r.report)
    assert.equal("", r.stderr, r.report)
  end)
end)

describe("Ctrl-C", function()
  -- Start the scenario in MODE, send SIGINT once its endless work has
  -- begun (the isolate writes its marker), and return the subprocess'
  -- record with 'after', the seconds from the signal to its end.
  local function interrupt(mode)
    local started = poll.marker()
    local p = sub.start(SCENARIO, {mode, started}, {timeout = 40})
    local pid = tonumber((sub.readline(p) or ""):match("^ready (%d+)$"))
    local begun = pid ~= nil and poll.await_file(started, 5)
    local sent, killed, why
    if begun then
      sent = posix.monotonic()
      killed, why = posix.kill(pid, "INT")
    end
    local r = sub.finish(p)		-- whatever happened, so that nothing is left behind
    os.remove(started)
    assert.is_not_nil(pid, "no \"ready PID\" line\n" .. r.report)
    assert.is_true(begun, "the isolates' work did not begin within 5 s\n" .. r.report)
    assert.is_true(killed, tostring(why) .. "\n" .. r.report)
    r.after = posix.monotonic() - sent
    return r
  end

  -- the line of 'out' that starts with 'key ', without it
  local function line(out, key)
    return ("\n" .. out):match("\n" .. key .. " ([^\n]*)")
  end

  it("interrupts isolate.map of endless calls: status 1 within 2 s", function()
    local r = interrupt("map")
    assert.is_nil(r.stdout:match("returned"), r.report)
    assert.equal(1, r.code, r.report)
    assert.matches("interrupted!", r.stderr, 1, true)
    assert.is_true(r.after < 2, string.format("ended %.1f s after the signal", r.after))
  end)

  it("interrupts an await inside a coroutine (the interpreter's hook is the main thread's): status 1", function()
    local r = interrupt("coroutine-await")
    assert.is_nil(r.stdout:match("returned"), r.report)
    assert.equal(1, r.code, r.report)
    assert.matches("interrupted!", r.stderr, 1, true)
    assert.is_true(r.after < 2, string.format("ended %.1f s after the signal", r.after))
  end)

  it("interrupts isolate.map, which cancels its work: no worker stays busy", function()
    local r = interrupt("map-caught")
    assert.equal(0, r.code, r.report)
    assert.matches("interrupted!", line(r.stdout, "caught:") or "", 1, true)
    assert.equal("0", line(r.stdout, "busy"), r.report)
    assert.is_true(r.after < 8, string.format("ended %.1f s after the signal", r.after))
  end)

  it("interrupts pool:close(), which leaves the pool closing", function()
    local r = interrupt("close-caught")
    assert.equal(0, r.code, r.report)
    assert.matches("interrupted!", line(r.stdout, "caught:") or "", 1, true)
    assert.matches("\nclosed\n", r.stdout, 1, true)
  end)

  it("interrupts isolate.run whose isolate runs a nested one on its own thread", function()
    local r = interrupt("nested-run")
    assert.equal(0, r.code, r.report)
    assert.matches("interrupted!", line(r.stdout, "caught:") or "", 1, true)
    assert.equal("0", line(r.stdout, "busy"), r.report)
  end)

  it("interrupts isolate.run, which cancels its work: no worker stays busy", function()
    local r = interrupt("run-caught")
    assert.equal(0, r.code, r.report)
    assert.matches("interrupted!", line(r.stdout, "caught:") or "", 1, true)
    assert.equal("0", line(r.stdout, "busy"), r.report)
    assert.is_true(r.after < 8, string.format("ended %.1f s after the signal", r.after))
  end)
end)
