// dist.cu: the NCCL transport of data-parallel training (lib/dist.h): a non-blocking NCCL
// communicator on one device, a high-priority stream of its own for the collectives, and the
// gradient all-reduce the backward drives (backend.h's GradSync). Every wait for the peers is a
// host loop that polls the work's event and ncclCommGetAsyncError and gives up after the
// timeout with ncclCommAbort, so a peer that dies makes this rank fail with STX_ERR_COMM and a
// message instead of hanging. Compiled only when CMake found NCCL (STX_HAVE_NCCL).
#ifdef STX_HAVE_NCCL
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "context.cuh"
#include "dist.h"
#include "error.h"

namespace stx {
namespace {

static_assert(sizeof(ncclUniqueId) == STX_DIST_ID_BYTES, "stx_dist_id holds an ncclUniqueId");

using Clock = std::chrono::steady_clock;

// Makes `device` current for the scope and restores the caller's device after.
class DeviceScope {
public:
    explicit DeviceScope(int device) {
        if (cudaGetDevice(&saved_) != cudaSuccess) saved_ = -1;
        if (saved_ != device) cudaSetDevice(device);
    }
    ~DeviceScope() {
        if (saved_ >= 0) cudaSetDevice(saved_);
    }

private:
    int saved_ = -1;
};

__global__ void scale_kernel(float *x, int64_t n, float s) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
        x[i] *= s;
}
__global__ void from_bf16_kernel(float *dst, const __nv_bfloat16 *src, int64_t n, float s) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
        dst[i] = s == 1.0f ? __bfloat162float(src[i]) : __bfloat162float(src[i]) * s;
}

unsigned grid_for(int64_t n) {
    const int64_t b = (n + 255) / 256;
    return static_cast<unsigned>(b < 1 ? 1 : b > 4096 ? 4096 : b);
}

class NcclTransport final : public Transport {
public:
    NcclTransport(int32_t rank, int32_t world, int32_t device, double timeout_s)
        : rank_(rank), world_(world), device_(device), timeout_s_(timeout_s) {}
    ~NcclTransport() override {
        DeviceScope scope(device_);
        if (comm_) {
            // Flush what was issued, then destroy; a peer that is gone makes that an abort.
            const ncclResult_t r = ncclCommFinalize(comm_);
            const bool clean =
                (r == ncclSuccess || r == ncclInProgress) && poll_comm(nullptr) == STX_OK;
            if (clean)
                ncclCommDestroy(comm_);
            else
                ncclCommAbort(comm_);
        }
        if (event_) cudaEventDestroy(event_);
        if (stream_) cudaStreamDestroy(stream_);
        if (dbuf_) cudaFree(dbuf_);
        if (hbuf_) cudaFreeHost(hbuf_);
    }

    int32_t rank() const override { return rank_; }
    int32_t world() const override { return world_; }
    int32_t device() const override { return device_; }
    bool broken() const override { return broken_; }
    cudaStream_t stream() const { return stream_; }
    ncclComm_t comm() const { return comm_; }

    stx_status init(const uint8_t *id) {
        DeviceScope scope(device_);
        if (cudaSetDevice(device_) != cudaSuccess) return cuda_fail("cudaSetDevice");
        int lo = 0, hi = 0;
        if (cudaDeviceGetStreamPriorityRange(&lo, &hi) != cudaSuccess ||
            cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, hi) != cudaSuccess)
            return cuda_fail("cudaStreamCreateWithPriority");
        if (cudaEventCreateWithFlags(&event_, cudaEventDisableTiming) != cudaSuccess)
            return cuda_fail("cudaEventCreate");
        ncclUniqueId uid;
        std::memcpy(&uid, id, sizeof uid);
        ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
        cfg.blocking = 0; // the join is polled, so a missing peer is a timeout, not a hang
        what_ = "joining the communicator (stx_dist_create)";
        const ncclResult_t r = ncclCommInitRankConfig(&comm_, world_, uid, rank_, &cfg);
        if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(r, "ncclCommInitRankConfig");
        return poll_comm("ncclCommInitRankConfig");
    }

    stx_status allreduce_host(double *values, int32_t n, stx_reduce_op op,
                              const char *fn) override {
        if (broken_) return broken_fail(fn);
        DeviceScope scope(device_);
        what_ = fn;
        if (static_cast<size_t>(n) > cap_) {
            if (dbuf_) cudaFree(dbuf_);
            if (hbuf_) cudaFreeHost(hbuf_);
            dbuf_ = hbuf_ = nullptr;
            cap_ = 0;
            if (cudaMalloc(&dbuf_, sizeof(double) * n) != cudaSuccess ||
                cudaMallocHost(&hbuf_, sizeof(double) * n) != cudaSuccess)
                return cuda_fail("cudaMalloc (all-reduce buffers)");
            cap_ = static_cast<size_t>(n);
        }
        std::memcpy(hbuf_, values, sizeof(double) * n);
        const ncclRedOp_t nop = op == STX_REDUCE_MIN   ? ncclMin
                                : op == STX_REDUCE_MAX ? ncclMax
                                                       : ncclSum;
        if (cudaMemcpyAsync(dbuf_, hbuf_, sizeof(double) * n, cudaMemcpyHostToDevice, stream_) !=
            cudaSuccess)
            return cuda_fail("cudaMemcpyAsync");
        stx_status s =
            call(ncclAllReduce(dbuf_, dbuf_, n, ncclFloat64, nop, comm_, stream_), "ncclAllReduce");
        if (s != STX_OK) return s;
        if (cudaMemcpyAsync(hbuf_, dbuf_, sizeof(double) * n, cudaMemcpyDeviceToHost, stream_) !=
                cudaSuccess ||
            cudaEventRecord(event_, stream_) != cudaSuccess)
            return cuda_fail("cudaMemcpyAsync");
        if ((s = wait_event(event_)) != STX_OK) return s;
        std::memcpy(values, hbuf_, sizeof(double) * n);
        return STX_OK;
    }

    stx_status make_grad_sync(int32_t precision, int64_t total, const DistGradOptions &o,
                              std::shared_ptr<Transport> self,
                              std::unique_ptr<GradSync> *out) override;

    // An NCCL call's result: a non-blocking communicator may answer ncclInProgress while it
    // enqueues; wait for that with the timeout.
    stx_status call(ncclResult_t r, const char *what) {
        if (r == ncclSuccess) return STX_OK;
        if (r != ncclInProgress) return nccl_fail(r, what);
        return poll_comm(what);
    }

    // Host wait for work on the stream, polling the communicator's errors and the clock.
    stx_status wait_event(cudaEvent_t e) {
        const auto t0 = Clock::now();
        for (int spins = 0;; ++spins) {
            const cudaError_t q = cudaEventQuery(e);
            if (q == cudaSuccess) return STX_OK;
            if (q != cudaErrorNotReady) return cuda_fail("cudaEventQuery", q);
            ncclResult_t a = ncclSuccess;
            ncclCommGetAsyncError(comm_, &a);
            if (a != ncclSuccess && a != ncclInProgress) return nccl_fail(a, "an NCCL operation");
            if (elapsed(t0) > timeout_s_) return timeout_fail();
            if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(20));
        }
    }

    // Records the first failure of a GradSync (it cannot return one from ready()).
    stx_status cuda_fail(const char *what, cudaError_t e = cudaGetLastError()) {
        abort_comm();
        return fail(STX_ERR_DEVICE, "rank %d of %d, %s: %s failed: %s", rank_, world_, what_, what,
                    cudaGetErrorString(e));
    }
    void set_what(const char *what) { what_ = what; }

private:
    static double elapsed(Clock::time_point t0) {
        return std::chrono::duration<double>(Clock::now() - t0).count();
    }

    // Waits until the communicator is out of ncclInProgress (what: the call, for the message;
    // nullptr: quietly, at destruction).
    stx_status poll_comm(const char *what) {
        const auto t0 = Clock::now();
        for (;;) {
            ncclResult_t a = ncclSuccess;
            const ncclResult_t r = ncclCommGetAsyncError(comm_, &a);
            if (r != ncclSuccess) a = r;
            if (a == ncclSuccess) return STX_OK;
            if (a != ncclInProgress) {
                if (!what) return STX_ERR_COMM;
                return nccl_fail(a, what);
            }
            if (elapsed(t0) > timeout_s_) {
                if (!what) return STX_ERR_COMM;
                return timeout_fail();
            }
            std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
    }

    void abort_comm() {
        if (comm_ && !broken_) ncclCommAbort(comm_);
        if (comm_) comm_ = nullptr;
        broken_ = true;
    }

    stx_status nccl_fail(ncclResult_t r, const char *call) {
        std::string detail = comm_ ? ncclGetLastError(comm_) : ncclGetLastError(nullptr);
        abort_comm();
        return fail(STX_ERR_COMM,
                    "rank %d of %d, %s: %s failed: %s%s%s (a peer may have failed; the "
                    "communicator is aborted)",
                    rank_, world_, what_, call, ncclGetErrorString(r), detail.empty() ? "" : ": ",
                    detail.c_str());
    }

    stx_status timeout_fail() {
        abort_comm();
        return fail(STX_ERR_COMM,
                    "rank %d of %d, %s: no answer from the other ranks within %g s (a peer "
                    "failed, hung or never started); the communicator is aborted",
                    rank_, world_, what_, timeout_s_);
    }

    stx_status broken_fail(const char *fn) {
        return fail(STX_ERR_COMM,
                    "%s: rank %d of %d: the communicator was aborted after an earlier failure", fn,
                    rank_, world_);
    }

    int32_t rank_, world_, device_;
    double timeout_s_;
    const char *what_ = "";
    ncclComm_t comm_ = nullptr;
    cudaStream_t stream_ = nullptr;
    cudaEvent_t event_ = nullptr;
    bool broken_ = false;
    double *dbuf_ = nullptr, *hbuf_ = nullptr; // device and pinned host: host all-reduces
    size_t cap_ = 0;
};

// The gradient all-reduce: for each range the backward finishes, the comm stream waits for
// it (an event on the compute stream), reduces it (fp32 in place, or a bf16 copy) and scales
// by 1/world; finish() waits for the last on the host (with the timeout) and makes the compute
// stream wait for it too.
class NcclGradSync final : public GradSync {
public:
    NcclGradSync(std::shared_ptr<Transport> t, const DistGradOptions &o, int64_t total)
        : keep_(std::move(t)), t_(static_cast<NcclTransport *>(keep_.get())), o_(o), total_(total) {
    }
    ~NcclGradSync() override {
        DeviceScope scope(t_->device());
        for (cudaEvent_t e : events_) cudaEventDestroy(e);
        if (done_) cudaEventDestroy(done_);
        if (stage_) cudaFree(stage_);
    }

    stx_status init() {
        DeviceScope scope(t_->device());
        t_->set_what("stx_model_set_dist");
        if (cudaEventCreateWithFlags(&done_, cudaEventDisableTiming) != cudaSuccess)
            return t_->cuda_fail("cudaEventCreate");
        if (o_.bf16 && cudaMalloc(&stage_, sizeof(__nv_bfloat16) * total_) != cudaSuccess)
            return fail(STX_ERR_OUT_OF_MEMORY,
                        "stx_model_set_dist: no device memory for the bf16 gradient copy (%lld "
                        "bytes)",
                        static_cast<long long>(sizeof(__nv_bfloat16) * total_));
        return STX_OK;
    }

    void ready(void *grads, int64_t offset, int64_t count, void *stream) override {
        if (err_ != STX_OK || count <= 0) return;
        if (t_->broken()) {
            record(fail(STX_ERR_COMM,
                        "stx_backward: rank %d of %d: the communicator was "
                        "aborted after an earlier failure",
                        t_->rank(), t_->world()));
            return;
        }
        DeviceScope scope(t_->device());
        t_->set_what("stx_backward (gradient all-reduce)");
        if (used_ == events_.size()) {
            cudaEvent_t e = nullptr;
            if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) {
                record(t_->cuda_fail("cudaEventCreate"));
                return;
            }
            events_.push_back(e);
        }
        cudaEvent_t e = events_[used_++];
        const cudaStream_t cs = t_->stream();
        if (cudaEventRecord(e, static_cast<cudaStream_t>(stream)) != cudaSuccess ||
            cudaStreamWaitEvent(cs, e, 0) != cudaSuccess) {
            record(t_->cuda_fail("cudaEventRecord/cudaStreamWaitEvent"));
            return;
        }
        float *g = static_cast<float *>(grads) + offset;
        const float inv = 1.0f / static_cast<float>(t_->world());
        if (o_.bf16) {
            __nv_bfloat16 *b = stage_ + offset;
            cuda::launch_to_bf16(cs, b, g, count);
            if (record(t_->call(ncclAllReduce(b, b, static_cast<size_t>(count), ncclBfloat16,
                                              ncclSum, t_->comm(), cs),
                                "ncclAllReduce (bf16 gradients)")))
                return;
            from_bf16_kernel<<<grid_for(count), 256, 0, cs>>>(g, b, count, inv);
        } else {
            if (record(t_->call(ncclAllReduce(g, g, static_cast<size_t>(count), ncclFloat, ncclSum,
                                              t_->comm(), cs),
                                "ncclAllReduce (fp32 gradients)")))
                return;
            if (t_->world() > 1) scale_kernel<<<grid_for(count), 256, 0, cs>>>(g, count, inv);
        }
        const cudaError_t le = cudaGetLastError();
        if (le != cudaSuccess) record(t_->cuda_fail("a gradient scaling kernel", le));
    }

    stx_status finish(void *stream) override {
        used_ = 0;
        if (err_ != STX_OK) {
            const stx_status s = err_;
            err_ = STX_OK;
            return fail(s, "%s", msg_.c_str());
        }
        DeviceScope scope(t_->device());
        if (cudaEventRecord(done_, t_->stream()) != cudaSuccess)
            return t_->cuda_fail("cudaEventRecord");
        stx_status s = t_->wait_event(done_);
        if (s != STX_OK) return s;
        if (cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), done_, 0) != cudaSuccess)
            return t_->cuda_fail("cudaStreamWaitEvent");
        return STX_OK;
    }

    int32_t bucket_layers() const override { return o_.bucket_layers; }

private:
    // Keeps the first failure and its message; returns whether s is one.
    bool record(stx_status s) {
        if (s == STX_OK) return false;
        if (err_ == STX_OK) {
            err_ = s;
            msg_ = stx_last_error();
        }
        return true;
    }

    std::shared_ptr<Transport> keep_;
    NcclTransport *t_;
    DistGradOptions o_;
    int64_t total_;
    __nv_bfloat16 *stage_ = nullptr;
    std::vector<cudaEvent_t> events_;
    size_t used_ = 0;
    cudaEvent_t done_ = nullptr;
    stx_status err_ = STX_OK;
    std::string msg_;
};

stx_status NcclTransport::make_grad_sync(int32_t precision, int64_t total, const DistGradOptions &o,
                                         std::shared_ptr<Transport> self,
                                         std::unique_ptr<GradSync> *out) {
    if (broken_) return broken_fail("stx_model_set_dist");
    if (precision == STX_PRECISION_FP64)
        return fail(STX_ERR_INTERNAL, "stx_model_set_dist: an fp64 model on CUDA");
    std::unique_ptr<NcclGradSync> s(new NcclGradSync(std::move(self), o, total));
    stx_status st = s->init();
    if (st != STX_OK) return st;
    *out = std::move(s);
    return STX_OK;
}

} // namespace

bool nccl_built() {
    return true;
}

stx_status nccl_unique_id(uint8_t bytes[STX_DIST_ID_BYTES]) {
    ncclUniqueId uid;
    const ncclResult_t r = ncclGetUniqueId(&uid);
    if (r != ncclSuccess)
        return fail(STX_ERR_COMM, "stx_dist_unique_id: ncclGetUniqueId failed: %s: %s",
                    ncclGetErrorString(r), ncclGetLastError(nullptr));
    std::memcpy(bytes, &uid, sizeof uid);
    return STX_OK;
}

stx_status create_nccl_transport(int32_t rank, int32_t world, const uint8_t id[STX_DIST_ID_BYTES],
                                 int32_t device, double timeout_s,
                                 std::unique_ptr<Transport> *out) {
    std::unique_ptr<NcclTransport> t(new NcclTransport(rank, world, device, timeout_s));
    stx_status s = t->init(id);
    if (s != STX_OK) return s;
    *out = std::move(t);
    return STX_OK;
}

} // namespace stx
#endif // STX_HAVE_NCCL
