-- busted's helper (.busted): a plain `busted` in the checkout first builds
-- what the specs need (make specdeps: the core, the spec modules and host).
-- The Makefile's targets build their own (the sanitizers' cores) and say
-- so with ISOLATE_SPEC_BUILT=1.
if os.getenv("ISOLATE_SPEC_BUILT") == nil then
  local ok = os.execute("make --no-print-directory -s specdeps >&2")
  if not ok then error("spec/make.lua: `make specdeps` failed: the specs need its build", 0) end
end
