-- The README's Lua examples run as they are, so that they cannot rot:
-- each ```lua block is a script of its own, run in a fresh directory by
-- this run's interpreter, and the `--> value` comments of its prints are
-- checked against what it printed.  A block that is a fragment on purpose
-- (it names what the reader supplies) is listed below, with why; what a
-- block needs around it (files, a function it only names) is too.
local sub = dofile("spec/subprocess.lua")

local ROOT = assert(os.getenv("PWD"), "PWD")

-- blocks that do not run alone, by a line of theirs: why
local FRAGMENTS = {
  ["return parse(read(name))"] = "the one-line pitch: parse, read and name are the reader's",
}

-- what a block needs, by a line of theirs: files in its directory, and
-- Lua run before it
local NEEDS = {
  ['isolate.run(load, "config.json")'] = {
    files = {["config.json"] = '{"name": "demo"}', ["a.json"] = "[1, 2]", ["b.json"] = '{"b": true}'},
  },
  ["load_database()"] = {
    before = [[local function load_database()
  local db = {names = {"a", "b"}}
  for i = 1, 10000 do db[i] = ("x"):rep(100) end
  return db
end]],
  },
}

-- the ```lua blocks of README.md: {line = n, text = "..."}
local function blocks()
  local list, current = {}, nil
  local n = 0
  for line in io.lines(ROOT .. "/README.md") do
    n = n + 1
    if current then
      if line == "```" then
        list[#list + 1] = current
        current = nil
      else
        current.text = current.text .. line .. "\n"
      end
    elseif line == "```lua" then
      current = {line = n + 1, text = ""}
    end
  end
  assert(current == nil, "a ```lua block of README.md is not closed")
  return list
end

local function lookup(map, text)
  for key, v in pairs(map) do
    if text:find(key, 1, true) then return v end
  end
end

local function absolute(template)
  return template:sub(1, 1) == "/" and template or ROOT .. "/" .. template
end

local function shell(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- run 'text' in a directory of its own; returns ok, stdout, stderr
local function run(text, needs)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir " .. shell(dir)))
  for name, content in pairs(needs and needs.files or {}) do
    local f = assert(io.open(dir .. "/" .. name, "w"))
    f:write(content)
    f:close()
  end
  local script = dir .. "/example.lua"
  local f = assert(io.open(script, "w"))
  if not text:find('require "isolate"', 1, true) then f:write('local isolate = require "isolate" ') end
  if needs and needs.before then f:write(needs.before, " ") end
  f:write(text)	-- (on the first line: the lines of errors are the block's)
  f:close()
  local cpath = {}
  for template in sub.cpath:gmatch("[^;]+") do cpath[#cpath + 1] = absolute(template) end
  local interpreter = sub.interpreter()
  if interpreter:find("/", 1, true) then interpreter = absolute(interpreter) end
  local errfile = dir .. "/stderr"
  local cmd = string.format("cd %s && env LUA_PATH_5_4=%s LUA_CPATH_5_4=%s TSAN_OPTIONS=%s timeout -k 2 120 %s example.lua 2>%s",
    shell(dir), shell(ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"), shell(table.concat(cpath, ";") .. ";;"),
    shell(os.getenv("TSAN_OPTIONS") or ""), shell(interpreter), shell(errfile))
  local p = io.popen(cmd)
  local out = p:read("a")
  local ok = p:close()
  local e = io.open(errfile)
  local err = e:read("a")
  e:close()
  os.execute("rm -rf " .. shell(dir))
  return ok, out, err
end

describe("the README's examples", function()
  local all = blocks()

  it("are there: ```lua blocks", function()
    assert.is_true(#all >= 6, #all .. " blocks")
  end)

  for _, block in ipairs(all) do
    local why = lookup(FRAGMENTS, block.text)
    local first = block.text:match("[^\n]*")
    if why then
      it(string.format("README.md:%d (%s) is a fragment: %s", block.line, first, why), function()
        assert.is_truthy(why)
      end)
    else
      it(string.format("README.md:%d (%s) runs, and prints what its --> comments say", block.line, first), function()
        local ok, out, err = run(block.text, lookup(NEEDS, block.text))
        assert.is_true(ok, "stdout:\n" .. out .. "\nstderr:\n" .. err)
        for expected in block.text:gmatch("%-%->%s*([^\n]-)%s*\n") do
          assert.is_truthy(out:find(expected, 1, true),
            string.format("prints %q; it printed:\n%s", expected, out))
        end
      end)
    end
  end
end)
