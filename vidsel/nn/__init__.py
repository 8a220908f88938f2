"""vidsel.nn"""
