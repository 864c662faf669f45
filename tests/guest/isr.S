/*
 * Interrupt/exception entry stubs.
 *
 * One stub per vector (0..255).  Each pushes a dummy error code (unless the
 * CPU pushed one), then the vector number, and jumps to a common path that
 * saves the general registers and calls isr_dispatch(struct isr_frame *).
 * isr_stub_table[] holds the 256 stub addresses for idt.c.
 */

    .code32
    .text

    .altmacro

/* The CPU pushes an error code for vectors 8, 10-14, 17, 21, 29, 30. */
    .macro  stub v
    .p2align 3
isr_stub_\v:
    .if !((\v == 8) || ((\v >= 10) && (\v <= 14)) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30))
    pushl   $0                  /* dummy error code */
    .endif
    pushl   $\v                 /* vector */
    jmp     isr_common
    .endm

    .set    vec, 0
    .rept   256
    stub    %vec
    .set    vec, vec + 1
    .endr

isr_common:
    pushal                      /* edi esi ebp esp ebx edx ecx eax */
    cld                         /* C code expects DF = 0 */
    movl    %esp, %eax
    pushl   %eax                /* struct isr_frame * */
    call    isr_dispatch
    addl    $4, %esp
    popal
    addl    $8, %esp            /* vector + error code */
    /*
     * Return without "iret": under this machine's KVM (KVM-PVM, no VMX/SVM)
     * the guest's instructions are run by KVM's x86 instruction emulator,
     * which implements iret only for real mode (protected-mode iret is a
     * KVM_EXIT_INTERNAL_ERROR "emulation failure").  For a return to the
     * same privilege level popfl + far return do the same job:
     *   stack: EIP, CS, EFLAGS  ->  restore EFLAGS, pop EIP/CS, drop EFLAGS.
     */
    pushl   8(%esp)             /* copy of the saved EFLAGS */
    popfl
    lret    $4

/* Table of stub addresses. */
    .section .rodata
    .p2align 2
    .globl  isr_stub_table
isr_stub_table:
    .macro  stub_addr v
    .long   isr_stub_\v
    .endm
    .set    vec, 0
    .rept   256
    stub_addr %vec
    .set    vec, vec + 1
    .endr

    .section .note.GNU-stack, "", @progbits
