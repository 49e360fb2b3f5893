-- Fork a process whose pool has started, run by process_spec.lua in a
-- subprocess of its own.  Three children, each with one check, so that a
-- hang in one does not hide the others:
--   run    isolate.run works in the child: it gets a working pool
--   spawn  so do spawn and await, several tasks at once
--   await  awaiting a task that was running in the parent at the fork
--          raises an error at once, a RemoteError of kind "error": its
--          worker thread does not exist in the child
-- and the parent, then, still gets that task's real result.  Each line of
-- output is "CHECK: ok" or "CHECK: what went wrong"; a child ends with
-- _exit(0) on success, 1 on a failed check, and an alarm ends it, killed
-- by signal 14, if it hangs.
local isolate = require "isolate"
local posix = require "posix"

local CHILD_SECONDS = 5		-- then SIGALRM ends a child that hangs

io.stdout:setvbuf("no")
local function say(check, verdict)	-- one write per line: children share the pipe
  io.stdout:write(check .. ": " .. (verdict == true and "ok" or tostring(verdict)) .. "\n")
end

assert(isolate.run(function() return 1 end) == 1, "the pool does not run")

-- A task that runs until the file 'go' exists (bounded).  It is running
-- when the parent forks, and ends in the parent once the children are done.
-- It looks for the file once in a million turns, and allocates nothing in
-- between: an allocator that does not lock itself around fork (ASan's, in
-- clang 14) leaves a child locked out of malloc if another thread was
-- inside it at the fork, which a loop of io.open made likely.
local go = os.tmpname()
os.remove(go)
local task = isolate.spawn(function(path)
  local deadline = os.time() + 15
  local n = 0
  while os.time() < deadline do
    n = n + 1
    if n == 1000000 then
      n = 0
      local f = io.open(path)
      if f then
        f:close()
        return "the parent's result"
      end
    end
  end
  return "no file"
end, go)
local deadline = posix.monotonic() + 5
while task:status() ~= "running" and posix.monotonic() < deadline do end
say("running at the fork", task:status() == "running" or task:status())

local checks = {
  run = function()
    local ok, r = pcall(isolate.run, function() return 42 end)
    if not ok then return "isolate.run raised " .. tostring(r) end
    return r == 42 or "isolate.run returned " .. tostring(r)
  end,

  spawn = function()
    local tasks = {}
    for i = 1, 4 do tasks[i] = isolate.spawn(function(x) return x * x end, i) end
    for i = 1, 4 do
      local ok, r = pcall(tasks[i].await, tasks[i])
      if not ok then return "await raised " .. tostring(r) end
      if r ~= i * i then return "task " .. i .. " returned " .. tostring(r) end
    end
    return true
  end,

  await = function()
    local ok, err = pcall(task.await, task)
    if ok then return "await returned " .. tostring(err) end
    if getmetatable(err) ~= isolate.RemoteError then
      return "await raised a " .. type(err) .. ", not a RemoteError: " .. tostring(err)
    end
    return err.kind == "error" or "await raised a RemoteError of kind " .. tostring(err.kind)
  end,
}

local children = {}
for _, name in ipairs{"run", "spawn", "await"} do
  io.stdout:flush()
  local pid = assert(posix.fork())
  if pid == 0 then
    posix.alarm(CHILD_SECONDS)
    local ok, verdict = pcall(checks[name])
    if not ok then verdict = "raised " .. tostring(verdict) end
    say("child " .. name, verdict)
    posix._exit(verdict == true and 0 or 1)
  end
  children[name] = pid
end

for _, name in ipairs{"run", "spawn", "await"} do
  local how, n = posix.waitpid(children[name])
  say("child " .. name .. " ended", how == "exited" and n == 0 or
      how == "signaled" and n == 14 and "hung: killed by its alarm after " .. CHILD_SECONDS .. " s" or
      how .. " " .. tostring(n))
end

-- fork inside an isolate: the child's one thread is a worker; when the
-- isolate's function returns there, the child process ends (status 0)
local inside = isolate.run(function()
  local px = require "posix"
  local pid = px.fork()
  if pid == 0 then
    px.alarm(CHILD_SECONDS)
    return "the child's"
  end
  return pid
end)
do
  local how, n = posix.waitpid(inside)
  say("child of an isolate ended", how == "exited" and n == 0 or
      how == "signaled" and n == 14 and "hung: killed by its alarm after " .. CHILD_SECONDS .. " s" or
      how .. " " .. tostring(n))
end

io.open(go, "w"):close()
local ok, r = pcall(task.await, task)
os.remove(go)
say("parent's task", ok and r == "the parent's result" or "await gave " .. tostring(ok) .. ", " .. tostring(r))
say("parent runs", isolate.run(function() return 7 end) == 7)
