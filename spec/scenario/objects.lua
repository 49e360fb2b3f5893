-- Objects that travel, where the process itself is under test, run by
-- objects_spec.lua in a subprocess of its own: `objects.lua MODE`.
--   streams   io.stdout and io.stderr sent into isolates in every position
--             (argument, upvalue, nested field, spawn, map item, emit,
--             result) and written through there: each write is one line,
--             in program order (stdout is one FILE of the process, which
--             the isolates share); prints "done" last
--   reenter   an __isolate that encodes a deep value whose innermost
--             object has that __isolate: each nesting re-enters the
--             encoder from user code, 195 levels of C recursion at a time,
--             until Lua's limit on C calls.  Must be an error ("C stack
--             overflow"), never a crash: prints "ok" and the error
--   reenter-run  the same through isolate.run, which the caller may run
--             on its own thread
local isolate = require "isolate"

local mode = arg[1]

if mode == "streams" then
  local out, err = io.stdout, io.stderr
  isolate.run(function(f, s) f:write(s) end, io.stdout, "argument stdout\n")
  isolate.run(function(f) f:write("argument stderr\n") end, io.stderr)
  isolate.run(function() out:write("upvalue stdout\n"); err:write("upvalue stderr\n") end)
  isolate.run(function(t) t.a.b[1]:write("field stderr\n") end, {a = {b = {io.stderr}}})
  isolate.run(function(t) for f, line in pairs(t) do f:write(line) end end, {[io.stdout] = "key stdout\n"})
  isolate.spawn(function(f) f:write("spawn stdout\n") end, out):await()
  isolate.map(function(f) f:write("map item\n") return true end, {out, out}, {chunk = 1})
  local t = isolate.spawn(function() isolate.emit(io.stdout, io.stderr) end)
  local o, e = t:receive()
  o:write("emit stdout\n")
  e:write("emit stderr\n")
  isolate.run(function() return io.stderr end):write("result stderr\n")
  -- nested: an isolate passes its own stdout on to an isolate of its own
  isolate.run(function() return isolate.run(function(f) f:write("nested stdout\n") end, io.stdout) end)
  -- an __isolate object whose constructor writes on arrival
  local greeter = setmetatable({}, {__isolate = function()
    return function(f) f:write("constructor stdout\n") return true end, io.stdout
  end})
  isolate.run(function(g) return g end, greeter)
  print("done")
elseif mode == "reenter" or mode == "reenter-run" then
  local mt = {}
  local function deep(x) for _ = 1, 195 do x = {x} end return x end
  mt.__isolate = function() return string.len, isolate.encode(deep(setmetatable({}, mt))) end
  local ok, e
  if mode == "reenter" then
    ok, e = pcall(isolate.encode, deep(setmetatable({}, mt)))
  else
    ok, e = pcall(isolate.run, function(v) return v end, deep(setmetatable({}, mt)))
    if type(e) == "table" then e = e.message end
  end
  if not ok and tostring(e):find("stack overflow", 1, true) then
    print("ok")
  else
    print("unexpected: " .. tostring(ok) .. " " .. tostring(e):sub(1, 200))
    os.exit(1)
  end
else
  print("no such mode: " .. tostring(mode))
  os.exit(2)
end
