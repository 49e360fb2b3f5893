/*
** codec.h: Lua values to bytes and back.
**
** Format: a magic "\x1bISO", a version byte, a varint count, the offset of
** the names section, then each value as one tag byte with an inline
** payload where it fits, then the names section (see codec.c).
** Integers are little-endian at their narrowest width; floats are their
** IEEE-754 bits.  Tables and functions carry ids in the order they are
** first met, so shared references and cycles are kept.
*/
#ifndef codec_h
#define codec_h

#include "lua.h"
#include "buffer.h"

/* what the encoded values are, for the paths in error messages */
typedef enum Role {
  ROLE_CALL,		/* a function and its arguments: "argument #2 > ..." */
  ROLE_RESULT,		/* results: "result #1 > ..." */
  ROLE_VALUE,		/* isolate.encode's values: "value #1 > ..." */
  ROLE_ITEM,		/* a map's items: "item #7 > ..." */
  ROLE_ITEMRESULT,	/* their results: "result of item #7 > ..." */
  ROLE_MEASURE		/* isolate.captures: as ROLE_VALUE, but an object
			   with __isolate is not called: it counts as nil */
} Role;

/*
** decoding flags: trusted input may hold bytecode, modules, C functions,
** the globals table and light userdata; other input is data only
*/
#define CODEC_TRUSTED	1
/*
** a message of this process that may borrow (codec_encodeborrowing),
** decoded while the strings it borrows are alive
*/
#define CODEC_BORROWED	2

void codec_encode (lua_State *L, Buffer *b, int first, int n, Role role);
/*
** The same, but a string of ISOLATE_BORROW bytes or more is borrowed: the
** message holds its address, not its bytes (b->borrowed counts them, and
** objects too, whose constructors run on the other side).  What the
** message borrows is pushed, a table (or nil when nothing): the caller
** keeps it alive until every decode of the message is done.  Only a
** decode with CODEC_BORROWED reads such a message.
*/
void codec_encodeborrowing (lua_State *L, Buffer *b, int first, int n, Role role);
/*
** The same as codec_encode, the values numbered from 'base' + 1 in error messages; when
** one cannot travel, its number goes to '*failed' (if not NULL) first.
*/
void codec_encodelist (lua_State *L, Buffer *b, int first, int n, Role role,
                       lua_Integer base, lua_Integer *failed);
int codec_decode (lua_State *L, Reader *r, int flags);
/* the same, the number of the value being decoded in '*at' ('base' + 1...),
   for an error's record; 0 there at the end */
int codec_decodeitems (lua_State *L, Reader *r, int flags, lua_Integer *at,
                       lua_Integer base);

/*
** 1 if the codec reads and writes the array parts of tables in place
** (luatable.h), checked on the first call; 0 if it goes through the API
*/
int codec_inplace (lua_State *L);

/* a message of 'n' strings (NULL: nil), written without Lua; 0: no memory */
int codec_putstrings (Buffer *b, const char *const *s, int n);

/* a raw string, outside any message; NULL: malformed */
int codec_putstring (Buffer *b, const char *s, size_t len);
const char *codec_getstring (Reader *r, size_t *len);

#endif
