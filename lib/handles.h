// handles.h: the registry of live handles (models, layouts). The API checks a handle here
// before touching it, so a pointer that was freed, freed twice or never came from the library
// is refused with a message instead of corrupting memory. One process-wide set under a mutex:
// a hash lookup per call, negligible beside the work of any call that takes a handle.
#pragma once

namespace stx {

void handle_register(const void *handle);
// False when the handle was not live (already freed, or never created).
bool handle_unregister(const void *handle);
bool handle_live(const void *handle);

} // namespace stx
