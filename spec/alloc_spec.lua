-- Allocation failures at every point of a step, in the caller's state
-- and in an isolate's.  The steps run in spec/scenario/alloc.lua, in a
-- subprocess of the host interpreter (spec/host.c), whose allocator fails
-- on request; see there for what each step checks.
local core = require "isolate.core"
local sub = dofile("spec/subprocess.lua")

-- alloc.lua PART in a subprocess; its summary is the first line of output
local function alloc(part)
  local r = sub.run("spec/scenario/alloc.lua", {part}, {timeout = 20, interpreter = sub.host()})
  assert.equal(0, r.code, r.report)
  assert.matches("^" .. part .. ": %d+ requests to fail; %d+ steps: .* 0 failed\n", r.stdout)
end

describe("an allocation that fails", function()
  describe("in the caller's state, at each request in turn, makes a memory error or nothing of", function()
    it("isolate.run of a closure with a graph of values", function()
      alloc("run")
    end)

    it("isolate.spawn and task:await of the same", function()
      alloc("spawn")
    end)

    it("isolate.decode(isolate.encode(...), {trusted = true}) of the same", function()
      alloc("codec")
    end)

    it("isolate.decode(isolate.encode(...)) and isolate.run of a big string and a big array", function()
      alloc("big")
    end)
  end)

  it("in an isolate, at each allocation of its job in turn, makes a RemoteError for memory", function()
    if core._failalloc == nil then
      pending("needs the core's _failalloc(n), not in this core")
      return
    end
    alloc("isolate")
  end)
end)

-- An isolate takes small blocks from an arena of its own, and from malloc
-- once the arena is used up.  A block resized within its size class stays
-- where it is, so a block from malloc must have its class's whole size:
-- a parser's vectors (4 bytes, then 8, 16) grew past a 4-byte block
-- before (valgrind's "Invalid write"; this spec catches it under valgrind).
describe("an isolate's small blocks past its arena", function()
  it("grow within their size class without writing past their end", function()
    local n = require("isolate").run(function()
      local keep = {}
      for i = 1, 5000 do keep[i] = {i} end	-- past 64 KiB of small blocks
      local src = {}
      for i = 1, 12 do src[#src + 1] = "local a" .. i .. " = " .. i end
      src[#src + 1] = "return a1"
      local s, sum = table.concat(src, "\n"), 0
      for _ = 1, 50 do sum = sum + load(s)() end
      return sum + #keep
    end)
    assert.equal(5050, n)
  end)
end)
