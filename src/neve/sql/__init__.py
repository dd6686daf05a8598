"""neve.sql"""
