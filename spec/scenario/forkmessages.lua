-- Fork and the descriptors, messages and completion sets of tasks, run by
-- messages_spec.lua in a subprocess of its own (/tmp/hostile4/fork_*.lua).
-- Each line of output is "CHECK: ok" or "CHECK: what went wrong"; a child
-- reports through its exit status (0: ok, 1: a failed check, with a line
-- of its own), and an alarm ends it, killed by signal 14, if it hangs.
--   child receive     a child receives the message of a parent's task (its
--                     copy) and _exits: the parent's pollfd stays readable
--   child exit        a child ends with os.exit(0, true), which closes its
--                     Lua state and the tasks in it: the same
--   parent's pollfd after the child's receive|exit
--                     in the parent, the task's descriptor is readable for
--                     its pending message,
--   parent's pollfd at the end, after the child's receive|exit
--                     and at its end; the message and result are there
--   child pollfd      a child asks for the pollfd of a task running in the
--                     parent at the fork (lost in the child: "failed"): it
--                     is readable
--   child completions a set made in the parent holding such a task:
--                     c:wait(2) in the child returns it
--   parent completions the parent's set still returns it when it ends there
--   child of an isolate  a process forked inside an isolate, whose copy
--                     emits 1500 messages (past the bound): emit returns
--                     false there, and the process ends (status 0) when
--                     the isolate's function does (a worker, it blocks
--                     SIGALRM: the parent kills it after 5 s instead)
local isolate = require "isolate"
local posix = require "posix"

local CHILD_SECONDS = 5		-- then SIGALRM ends a child that hangs

io.stdout:setvbuf("no")
local function say(check, verdict)	-- one write per line: children share the pipe
  io.stdout:write(check .. ": " .. (verdict == true and "ok" or tostring(verdict)) .. "\n")
end

-- run fn() in a forked child; its verdict is its line and its exit status
local function child(name, fn)
  io.stdout:flush()
  local pid = assert(posix.fork())
  if pid == 0 then
    posix.alarm(CHILD_SECONDS)
    local ok, verdict = pcall(fn)
    if not ok then verdict = "raised " .. tostring(verdict) end
    say(name, verdict)
    posix._exit(verdict == true and 0 or 1)
  end
  return pid
end

-- how a child ended, as a verdict
local function ended(pid)
  local how, n = posix.waitpid(pid)
  return how == "exited" and n == 0 or
         how == "signaled" and n == 14 and "hung: killed by its alarm after " .. CHILD_SECONDS .. " s" or
         how .. " " .. tostring(n)
end

-- The same for a child forked inside an isolate, whose one thread is a
-- worker that blocks SIGALRM: wait (bounded) until it has ended (a
-- zombie), else kill it.
local function gone(pid)
  local deadline = posix.monotonic() + CHILD_SECONDS
  repeat
    local f = io.open("/proc/" .. pid .. "/stat")
    local stat = f and f:read("a") or ""
    if f then f:close() end
    if stat == "" or stat:match("^%d+ %b() ([ZX])") then return ended(pid) end
  until posix.monotonic() > deadline
  posix.kill(pid, "KILL")
  posix.waitpid(pid)
  return "hung: still running after " .. CHILD_SECONDS .. " s, killed"
end

local function readable(fd, ms)
  local r, err = posix.poll(fd, ms or 0)
  if r == nil then return err end
  return r
end

-- wait (bounded, 5 s) for cond()
local function eventually(cond)
  local deadline = posix.monotonic() + 5
  while not cond() do
    if posix.monotonic() > deadline then return false end
  end
  return true
end

-- A task that runs until the file 'go' exists (bounded), sending 'first'
-- first if given.  It looks for the file once in a million turns and
-- allocates nothing in between (see fork.lua: an allocator that is not
-- fork-safe).
local function gated(path, first)
  if first ~= nil then isolate.emit(first) end
  local deadline = os.time() + 15
  local n = 0
  while os.time() < deadline do
    n = n + 1
    if n == 1000000 then
      n = 0
      local f = io.open(path)
      if f then
        f:close()
        return "end"
      end
    end
  end
  return "no file"
end

local function marker()
  local path = os.tmpname()
  os.remove(path)
  return path
end

assert(isolate.run(function() return 1 end) == 1, "the pool does not run")

-- 1. a parent's task with a message pending and a pollfd, and a child
-- that receives the message (its copy), or exits
local children = {
  receive = function(task)
    -- (what the child's copy gives does not matter: that the parent's
    -- descriptor stays as it was does)
    pcall(task.receive, task, 1)
    return true
  end,
  exit = function()
    os.exit(0, true)		-- (lua_close: the task's handle is collected)
  end,
}
for _, how in ipairs{"receive", "exit"} do
  local go = marker()
  local task = isolate.spawn(gated, go, "hello")
  local fd = task:pollfd()
  if not eventually(function() return task:pending() == 1 end) then
    say("message before the fork", "pending " .. task:pending())
  end
  local pid = child("child " .. how, function() return children[how](task) end)
  say("child " .. how .. " ended", ended(pid))
  local after = readable(fd, 0)
  say("parent's pollfd after the child's " .. how,
      after == true and task:pending() == 1 or "readable " .. tostring(after) .. ", pending " .. task:pending())
  io.open(go, "w"):close()
  local done = task:wait(10)
  local atend = readable(fd, 2000)
  local v = task:receive(0)
  local r = task:await(0)
  os.remove(go)
  say("parent's pollfd at the end, after the child's " .. how,
      done and atend == true and v == "hello" and r == "end" or
      string.format("ended %s, readable %s, message %s, result %s", tostring(done), tostring(atend), tostring(v), tostring(r)))
end

-- 2. a parent's task running at the fork, held by a completions set
do
  local go = marker()
  local task = isolate.spawn(gated, go)
  local c = isolate.completions():add(task)
  if not eventually(function() return task:status() == "running" end) then
    say("running at the fork", task:status())
  end
  local pid = child("child pollfd", function()
    local fd = task:pollfd()
    local r = readable(fd, 2000)
    if r ~= true then return "not readable within 2 s: " .. tostring(r) .. ", status " .. task:status() end
    return task:status() == "failed" or "status " .. task:status()
  end)
  say("child pollfd ended", ended(pid))
  pid = child("child completions", function()
    local list = c:wait(2)
    if #list ~= 1 or list[1] ~= task then return "c:wait(2) returned " .. #list .. " tasks" end
    if #c ~= 0 then return "#c is " .. #c end
    if #c:ended() ~= 0 then return "ended() lists it again" end
    return task:status() == "failed" or "status " .. task:status()
  end)
  say("child completions ended", ended(pid))
  io.open(go, "w"):close()
  local list = c:wait(10)
  os.remove(go)
  say("parent completions", #list == 1 and list[1] == task and task:await(0) == "end" or
      "c:wait(10) returned " .. #list .. " tasks, status " .. task:status())
  c:close()
end

-- 3. a process forked inside an isolate whose copy emits past the bound
do
  local task = isolate.spawn(function()
    local px = require "posix"
    local pid = px.fork()
    if pid == 0 then
      local sent = 0
      for i = 1, 1500 do
        if isolate.emit(i) then sent = sent + 1 end
      end
      io.stdout:write("emit in the child of an isolate: ",
        sent == 0 and "ok" or sent .. " of 1500 returned true", "\n")
      return "the child's"
    end
    isolate.emit(pid)
    return pid
  end)
  local pid = task:receive(10)	-- (not a wait for the end)
  say("child of an isolate ended", type(pid) == "number" and gone(pid) or "no pid: " .. tostring(pid))
  local r = task:await(10)
  say("parent of the isolate's child", r == pid or "result " .. tostring(r))
end

say("parent runs", isolate.run(function() return 7 end) == 7)
