// x86-64 System V context switch for the simulator's fibers: saves the callee-saved registers on the current
// stack, stores the stack pointer in *from, and resumes the stack at to. MXCSR and the x87 control word are
// not switched: kernels never change them, and every fiber of a launch runs on the thread that started it.
    .text
    .globl ddpmsim_fiber_switch
    .hidden ddpmsim_fiber_switch
    .type ddpmsim_fiber_switch, @function
ddpmsim_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ddpmsim_fiber_switch, .-ddpmsim_fiber_switch

// First code a new fiber runs (its stack pointer 16-byte aligned here); ddpmsim_fiber_main never returns.
    .globl ddpmsim_fiber_start
    .hidden ddpmsim_fiber_start
    .type ddpmsim_fiber_start, @function
ddpmsim_fiber_start:
    call ddpmsim_fiber_main
    ud2
    .size ddpmsim_fiber_start, .-ddpmsim_fiber_start

    .section .note.GNU-stack,"",@progbits
