-- What the specs test is the working tree: its build of the C core
-- (build/, or build/asan/ and build/tsan/ for the sanitizer runs) and its
-- Lua layer (lua/), even with isolate installed by LuaRocks (whose
-- directories are on the default package paths).  And the versions: the
-- Lua layer refuses a core of another release.
local isolate = require "isolate"
local core = require "isolate.core"
local sub = dofile("spec/subprocess.lua")

-- a path of the working tree, relative to it (as .busted's lpath and
-- cpath, and the Makefile's --cpath, put them)
local function intree(path, dir)
  return type(path) == "string" and (path:sub(1, #dir + 1) == dir .. "/" or path:sub(1, #dir + 3) == "./" .. dir .. "/")
end

-- the canonical absolute path of a file
local function realpath(path)
  local p = assert(io.popen("realpath -- '" .. path:gsub("'", "'\\''") .. "'"))
  local r = p:read("l")
  p:close()
  return r
end

describe("the specs", function()
  it("load the C core of the working tree's build", function()
    local found = package.searchpath("isolate.core", package.cpath)
    assert.is_true(intree(found, "build"), "isolate.core is found at " .. tostring(found) ..
      ", not in the working tree's build/ (package.cpath: " .. package.cpath .. ")")
  end)

  it("have no other copy of the C core mapped into the process", function()
    local f = io.open("/proc/self/maps")
    if not f then return pending("no /proc/self/maps") end
    local want = realpath(package.searchpath("isolate.core", package.cpath))
    local tree = realpath(".")
    assert.equal(tree .. "/build/", want:sub(1, #tree + 7))
    local mapped = {}
    for line in f:lines() do
      local file = line:match("%s(/%S*/isolate/core%.so)$")
      if file then mapped[file] = true end
    end
    f:close()
    assert.same({[want] = true}, mapped)
  end)

  it("load the Lua layer of the working tree", function()
    local source = debug.getinfo(isolate.map, "S").source
    assert.is_true(intree(source:sub(2), "lua") and source:match("/isolate/init%.lua$") ~= nil,
      "isolate.map comes from " .. source)
    for _, name in ipairs {"isolate", "isolate.luv", "isolate.cqueues", "isolate.adapters"} do
      local found = package.searchpath(name, package.path)
      assert.is_true(intree(found, "lua"), name .. " is found at " .. tostring(found) ..
        ", not in the working tree's lua/ (package.path: " .. package.path .. ")")
    end
  end)
end)


-- the version field of a rockspec file
local function rockspec_version(path)
  local f = assert(io.open(path))
  local text = f:read("a")
  f:close()
  return text:match('\nversion%s*=%s*"([^"]*)"')
end

describe("_VERSION", function()
  it("is the same release in the Lua layer, the C core and the versioned rockspec", function()
    assert.equal("isolate 0.1.0", isolate._VERSION)
    assert.equal(isolate._VERSION, core._VERSION)
    local release = isolate._VERSION:match("^isolate (.*)$")
    local path = "rockspec/isolate-" .. release .. "-1.rockspec"
    assert.equal(release .. "-1", rockspec_version(path))
    assert.equal("scm-1", rockspec_version("rockspec/isolate-scm-1.rockspec"))
  end)

  it("of a core that is not the Lua layer's makes require 'isolate' fail, naming both and where", function()
    local loaded, loaded_core = package.loaded.isolate, package.loaded["isolate.core"]
    package.loaded.isolate = nil
    package.loaded["isolate.core"] = {_VERSION = "isolate 0.0.9"}
    local ok, err = pcall(require, "isolate")
    package.loaded.isolate, package.loaded["isolate.core"] = loaded, loaded_core
    assert.is_false(ok)
    assert.equal("isolate: the C core isolate.core (" .. package.searchpath("isolate.core", package.cpath) ..
      ') is version "0.0.9", but the Lua module is version "0.1.0": reinstall isolate (luarocks make)', err)
    -- a core that says where it was loaded from is named so, whatever the paths find now
    package.loaded.isolate = nil
    package.loaded["isolate.core"] = {_VERSION = "isolate 0.1.0 ", _FILE = "/old/core.so"}
    ok, err = pcall(require, "isolate")
    package.loaded.isolate, package.loaded["isolate.core"] = loaded, loaded_core
    assert.equal('isolate: the C core isolate.core (/old/core.so) is version "0.1.0 ", '
      .. 'but the Lua module is version "0.1.0": reinstall isolate (luarocks make)', err)
    -- what is no table at all
    for _, garbage in ipairs({42, true, print}) do
      package.loaded.isolate = nil
      package.loaded["isolate.core"] = garbage
      ok, err = pcall(require, "isolate")
      package.loaded.isolate, package.loaded["isolate.core"] = loaded, loaded_core
      assert.matches('^isolate: the C core isolate.core %(.*%) is version unknown, but the Lua module '
        .. 'is version "0.1.0"', err)
    end
  end)

  it("knows the file it was loaded from", function()
    local core = require "isolate.core"
    assert.equal(package.searchpath("isolate.core", package.cpath), core._FILE:gsub("^%./", ""))
  end)

  it("of a core found first by another loader makes a fresh process's require 'isolate' fail", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
package.preload["isolate.core"] = function() return {} end   -- a core of no version
local ok, err = pcall(require, "isolate")
io.write(tostring(ok), "\n", err, "\n")
]])
    f:close()
    local r = sub.run(script, {}, {timeout = 20})
    os.remove(script)
    assert.equal(0, r.code, r.report)
    assert.equal("false\nisolate: the C core isolate.core (:preload:) is version unknown, " ..
      'but the Lua module is version "0.1.0": reinstall isolate (luarocks make)\n', r.stdout)
  end)
end)
