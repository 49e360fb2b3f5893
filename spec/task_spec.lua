local isolate = require "isolate"

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
