// handles.cpp: the registry of live handles (handles.h).
#include "handles.h"

#include <mutex>
#include <unordered_set>

namespace stx {
namespace {

std::mutex &registry_mutex() {
    static std::mutex m;
    return m;
}

std::unordered_set<const void *> &registry() {
    static std::unordered_set<const void *> live;
    return live;
}

} // namespace

void handle_register(const void *handle) {
    std::lock_guard<std::mutex> lock(registry_mutex());
    registry().insert(handle);
}

bool handle_unregister(const void *handle) {
    std::lock_guard<std::mutex> lock(registry_mutex());
    return registry().erase(handle) == 1;
}

bool handle_live(const void *handle) {
    std::lock_guard<std::mutex> lock(registry_mutex());
    return registry().count(handle) == 1;
}

} // namespace stx
